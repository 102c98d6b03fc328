package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/internal/testgo"
)

// TestRelayStopsWhenContextEnds: ztunnel cancels a tunnel's context when
// policy changes and the connection is now denied; both ends must close.
func TestRelayStopsWhenContextEnds(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithCancel(context.Background())
	relayDone := make(chan error, 1)
	ts := startServer(t, m, HandlerFunc(func(_ context.Context, tun *Tunnel) {
		up, err := net.Dial("tcp", tun.Authority.String())
		if err != nil {
			tun.Reject(errors.Join(ErrUpstream, err))
			return
		}
		s, _ := tun.Accept()
		_, err = Relay(ctx, s, up)
		relayDone <- err
	}))
	upstreamClosed := make(chan struct{})
	upstream := startTCP(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		close(upstreamClosed)
	})
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, upstream))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cancel()
	if err := <-relayDone; !errors.Is(err, context.Canceled) {
		t.Errorf("Relay returned %v, want context.Canceled", err)
	}
	<-upstreamClosed
	if _, err := io.ReadAll(s); err == nil {
		t.Error("client read a clean EOF from a tunnel closed by policy, want a reset")
	}
}

func TestStreamDeadlines(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, m, holdOpen(release))
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, netip.MustParseAddrPort("10.1.0.9:80")))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	s.SetReadDeadline(time.Time{})
	// The writer fills the peer's 4 MiB window (nobody reads): that much
	// goes out however slow the machine, with a deadline far away...
	s.SetWriteDeadline(time.Now().Add(time.Minute))
	if n, err := s.Write(make([]byte, DefaultStreamWindow)); err != nil || n != DefaultStreamWindow {
		t.Fatalf("Write of one window: %d, %v; want all %d bytes", n, err, DefaultStreamWindow)
	}
	// ...and then not one byte more: the next write waits for its deadline.
	s.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := s.Write(make([]byte, 8<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
		t.Fatalf("Write past the window: %d, %v; want 0 bytes and a deadline error", n, err)
	}
}

func TestDialHonoursContext(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		<-ctx.Done() // never answers; ends when the client gives up
	}))
	pool := newTestPool(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := pool.Dial(ctx, m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want context.DeadlineExceeded", err)
	}
	testgo.Eventually(t, "the abandoned stream to be released", func() bool { return pool.Stats().Streams == 0 })
}

// TestClientAgainstXNetServer: the Pool opens tunnels to a standard
// HTTP/2 server (x/net's), which echoes the CONNECT body.
func TestClientAgainstXNetServer(t *testing.T) {
	m := newMesh(t)
	l := listenLoopback(t, "127.0.0.1:0")
	defer l.Close()
	srv := &http2.Server{}
	cfg := serverTLS(m.serverSVID, m.bundle, nil)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != "10.1.0.9:80" || r.Header.Get("Forwarded") != `for="10.1.0.5:40122"` {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			w.Write(buf[:n])
			w.(http.Flusher).Flush()
			if err != nil {
				return
			}
		}
	})
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			testgo.Go(t, func(ctx context.Context) {
				defer context.AfterFunc(ctx, func() { c.Close() })()
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil { // x/net checks the TLS state up front
					c.Close()
					return
				}
				srv.ServeConn(tc, &http2.ServeConnOpts{Handler: echo, Context: ctx})
			})
		}
	})
	pool := newTestPool(t, m)
	req := m.request(&testServer{addr: l.Addr().(*net.TCPAddr).AddrPort()}, netip.MustParseAddrPort("10.1.0.9:80"))
	s, err := pool.Dial(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("interop"))
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "interop" {
		t.Fatalf("echo from x/net = %q, %v", got, err)
	}
}
