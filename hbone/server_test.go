package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"testing"

	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/internal/testgo"
)

func TestTunnelEchoesAndReportsCounts(t *testing.T) {
	m := newMesh(t)
	fwd := &forward{}
	ts := startServer(t, m, fwd)
	pool := newTestPool(t, m)
	echo := startEcho(t)

	s, err := pool.Dial(testContext(t), m.request(ts, echo))
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello through the mesh")
	if _, err := s.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	s.Close()
	testgo.Eventually(t, "relay counts", func() bool {
		fwd.mu.Lock()
		defer fwd.mu.Unlock()
		return len(fwd.counts) == 1
	})
	want := Counts{FromClient: int64(len(msg)), FromServer: int64(len(msg))}
	if fwd.counts[0] != want {
		t.Errorf("counts = %+v, want %+v", fwd.counts[0], want)
	}
}

func TestHandlerSeesPeerAuthorityForwardedTraceParent(t *testing.T) {
	m := newMesh(t)
	seen := make(chan *Tunnel, 1)
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		seen <- tun
		tun.Reject(ErrDenied)
	}))
	pool := newTestPool(t, m)
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:8080"))
	req.Forwarded = netip.MustParseAddrPort("[fd00::5]:40122")
	req.TraceParent, _ = ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	pool.Dial(testContext(t), req)

	tun := <-seen
	if tun.Peer != m.clientSVID.ID {
		t.Errorf("Peer = %v, want %v", tun.Peer, m.clientSVID.ID)
	}
	if tun.Authority != req.Authority {
		t.Errorf("Authority = %v, want %v", tun.Authority, req.Authority)
	}
	if tun.Forwarded != req.Forwarded {
		t.Errorf("Forwarded = %v, want %v", tun.Forwarded, req.Forwarded)
	}
	if tun.TraceParent != req.TraceParent {
		t.Errorf("TraceParent = %v, want %v", tun.TraceParent, req.TraceParent)
	}
}

func TestNewTraceParentPerTunnel(t *testing.T) {
	m := newMesh(t)
	seen := make(chan TraceParent, 2)
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		seen <- tun.TraceParent
		tun.Reject(ErrDenied)
	}))
	pool := newTestPool(t, m)
	for range 2 {
		pool.Dial(testContext(t), m.request(ts, netip.MustParseAddrPort("10.1.0.9:80")))
	}
	a, b := <-seen, <-seen
	if !a.IsValid() || !b.IsValid() || a == b {
		t.Errorf("trace contexts %v and %v: want two distinct valid ones", a, b)
	}
}

// TestStatuses checks every answer through the Pool, and the ones the Pool
// cannot produce (bad method, bad authority) through x/net's HTTP/2
// client, which also shows the server speaks standard HTTP/2.
func TestStatuses(t *testing.T) {
	m := newMesh(t)
	closedPort := startTCP(t, func(*net.TCPConn) {})
	ln := listenLoopback(t, "127.0.0.1:0")
	refused := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		switch tun.Authority.Port() {
		case 401:
			tun.Reject(fmt.Errorf("policy ns/deny-all rule 0: %w", ErrDenied))
		case 500:
			// returns without answering
		default:
			(&forward{}).ServeTunnel(ctx, tun)
		}
	}))
	pool := newTestPool(t, m)

	for _, tc := range []struct {
		name      string
		authority netip.AddrPort
		want      error
	}{
		{"200 open", closedPort, nil},
		{"401 denied", netip.MustParseAddrPort("127.0.0.1:401"), ErrDenied},
		{"503 upstream refused", refused, ErrUpstream},
		{"503 handler did not answer", netip.MustParseAddrPort("127.0.0.1:500"), ErrUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := pool.Dial(testContext(t), m.request(ts, tc.authority))
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Dial error = %v, want %v", err, tc.want)
			}
			if s != nil {
				s.Close()
			}
		})
	}

	raw := rawClient(t, m, ts)
	for _, tc := range []struct {
		name, method, authority string
		want                    int
	}{
		{"400 GET", http.MethodGet, "127.0.0.1:80", 400},
		{"400 host name", http.MethodConnect, "example.com:80", 400},
		{"400 port 0", http.MethodConnect, "127.0.0.1:0", 400},
		{"401 via x/net", http.MethodConnect, "127.0.0.1:401", 401},
		{"200 via x/net", http.MethodConnect, closedPort.String(), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{
				Method: tc.method,
				URL:    &url.URL{Scheme: "https", Host: tc.authority, Path: "/"},
				Host:   tc.authority,
				Header: http.Header{},
			}
			resp, err := raw.RoundTrip(req.WithContext(testContext(t)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

// rawClient is x/net's HTTP/2 client presenting the mesh client's SVID.
func rawClient(t *testing.T, m *mesh, ts *testServer) *http2.Transport {
	cfg := clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID)
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", ts.addr.String())
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func TestStatusFor(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 200},
		{fmt.Errorf("x: %w", ErrBadRequest), 400},
		{fmt.Errorf("x: %w", ErrDenied), 401},
		{fmt.Errorf("x: %w", ErrUpstream), 503},
		{errors.New("anything else"), 503},
	} {
		if got := StatusFor(tc.err); got != tc.want {
			t.Errorf("StatusFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
		if tc.want != 200 && tc.err != nil && errors.Is(tc.err, errorFor(tc.want)) != (tc.want != 503 || errors.Is(tc.err, ErrUpstream)) {
			t.Errorf("errorFor(%d) does not read back %v", tc.want, tc.err)
		}
	}
}
