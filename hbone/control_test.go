package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// The server acknowledges the client's first SETTINGS (RFC 9113 6.5.3)
// and answers a PING, both through the control queue.
func TestServerAcknowledgesSettingsAndPing(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	tc, err := tls.Dial("tcp", ts.addr.String(), clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	ping := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := fr.WritePing(false, ping); err != nil {
		t.Fatal(err)
	}
	var settingsAcked, pingAcked bool
	for !settingsAcked || !pingAcked {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's frames (SETTINGS ack %v, PING ack %v): %v", settingsAcked, pingAcked, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			settingsAcked = settingsAcked || f.IsAck()
		case *http2.PingFrame:
			if f.IsAck() && f.Data == ping {
				pingAcked = true
			}
		}
	}
}

// However a stream ends, it has ended at the server before the client can
// open the next one in its slot: with a limit of one stream per
// connection, streams opened one after another are never refused
// (REFUSED_STREAM, which the pool would retry once without a word). The
// client's queued RST_STREAM used to trail the next HEADERS, and a server
// used to free the slot only after its final frame was out.
func TestAStreamEndsBeforeTheNextOpens(t *testing.T) {
	cases := []struct {
		name   string
		server func(t *Tunnel)
		client func(s *Stream, err error) error
	}{
		{"client resets", func(t *Tunnel) {
			if s, err := t.Accept(); err == nil {
				io.Copy(io.Discard, s)
			}
		}, func(s *Stream, err error) error {
			if err == nil {
				s.Close() // nothing received yet: RST_STREAM
			}
			return err
		}},
		{"server resets", func(t *Tunnel) {
			if s, err := t.Accept(); err == nil {
				s.Close()
			}
		}, func(s *Stream, err error) error {
			if err == nil {
				io.Copy(io.Discard, s)
				s.Close()
			}
			return err
		}},
		{"server rejects", func(t *Tunnel) { t.Reject(ErrDenied) }, func(s *Stream, err error) error {
			if errors.Is(err, ErrDenied) {
				return nil
			}
			return fmt.Errorf("got %v, want the 401", err)
		}},
		{"both end cleanly", func(t *Tunnel) {
			if s, err := t.Accept(); err == nil {
				io.Copy(io.Discard, s)
				s.CloseWrite()
			}
		}, func(s *Stream, err error) error {
			if err == nil {
				s.CloseWrite()
				io.Copy(io.Discard, s)
				s.Close()
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			ts := startServer(t, m, HandlerFunc(func(_ context.Context, tun *Tunnel) { tc.server(tun) }),
				func(c *ServerConfig) { c.MaxConcurrentStreams = 1 })
			var retries atomic.Int64
			p := newTestPool(t, m, func(c *PoolConfig) { c.Logger = slog.New(retryCounter{&retries}) })
			req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))
			for i := range 2000 {
				if err := tc.client(p.Dial(testContext(t), req)); err != nil {
					t.Fatalf("stream %d: %v (%d refused and retried before)", i, err, retries.Load())
				}
			}
			if n := retries.Load(); n > 0 {
				t.Errorf("%d streams refused by the server and retried", n)
			}
		})
	}
}

// retryCounter counts the pool's "retrying" log records.
type retryCounter struct{ n *atomic.Int64 }

func (h retryCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h retryCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "retrying") {
		h.n.Add(1)
	}
	return nil
}
func (h retryCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h retryCounter) WithGroup(string) slog.Handler      { return h }

// failingCloseWrite is a socket whose CloseWrite fails, as shutdown(2)
// does (ENOTCONN) on a TCP connection the workload has reset.
type failingCloseWrite struct{ *net.TCPConn }

func (failingCloseWrite) CloseWrite() error { return syscall.ENOTCONN }

// The read loop never waits for the write lock, also when it ends a relay:
// at the client's END_STREAM the sink closes its socket's write side,
// which fails here, and the relay then closes the stream, which writes
// END_STREAM under wmu. Done on the read loop, that stalled every stream
// of the connection while any writer held wmu.
func TestReadLoopNeverWaitsForTheWriteLock(t *testing.T) {
	m := newMesh(t)
	relayed := make(chan *Stream, 1)
	bystanderGot := make(chan []byte, 1)
	up, _ := tcpPair(t) // here: the handler's goroutine may outlive the test
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		s, err := tun.Hijack()
		if err != nil {
			return
		}
		if tun.Authority.Port() == 2 { // the bystander: report what arrives
			b := make([]byte, 1)
			io.ReadFull(s, b)
			bystanderGot <- b
			s.Close()
			return
		}
		StartRelay(ctx, s, failingCloseWrite{up}, func(Counts, error) {})
		relayed <- s
	}))
	p := newTestPool(t, m)
	client := m.dial(t, p, ts, netip.MustParseAddrPort("10.1.0.9:1"))
	defer client.Close()
	bystander := m.dial(t, p, ts, netip.MustParseAddrPort("10.1.0.9:2"))
	defer bystander.Close()
	sc := (<-relayed).c
	sc.wmu.Lock() // a writer holds the server's write lock (say, blocked on a full socket)
	client.CloseWrite()
	time.Sleep(200 * time.Millisecond) // the read loop ends the sink, and the relay
	bystander.Write([]byte{'x'})
	select {
	case b := <-bystanderGot:
		sc.wmu.Unlock()
		if b[0] != 'x' {
			t.Fatalf("the bystander stream received %q", b)
		}
	case <-time.After(3 * time.Second):
		sc.wmu.Unlock()
		t.Fatal("the server's read loop stalled: it waits for the write lock")
	}
}
