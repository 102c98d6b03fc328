package waypoint

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/regomesh/regomesh/hbone"
)

// Shutdown lets a request in flight finish, over HTTP/1.1 and over h2c
// (GOAWAY), then refuses new tunnels.
func TestShutdownFinishesRequestsInFlight(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			m := newTestMesh(t)
			c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
			if proto == "h2c" {
				c = m.h2cClient(netip.AddrPortFrom(webVIP, 80))
			}
			done := make(chan answer, 1)
			go func() {
				resp, err := c.Get("http://web.shop/public/slow")
				if err != nil {
					done <- answer{body: err.Error()}
					return
				}
				resp.Body.Close()
				done <- answer{status: resp.StatusCode, header: resp.Header}
			}()
			select {
			case <-m.slow:
			case <-time.After(10 * time.Second):
				t.Fatal("the request never reached the backend")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := m.wp.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if a := <-done; a.status != http.StatusOK {
				t.Fatalf("the request in flight: %+v, want 200", a)
			}
			if _, err := m.dial(t.Context(), netip.AddrPortFrom(webVIP, 80)); err == nil {
				t.Fatal("a new tunnel opened after Shutdown")
			}
		})
	}
}

// The original client's address reaches the endpoint in Forwarded: the
// tunnel's socket peer, or, from another waypoint only, the address it
// forwarded.
func TestForwardedOnlyFromWaypoints(t *testing.T) {
	m := newTestMesh(t)
	claimed := netip.MustParseAddrPort("10.7.7.7:1234")
	for _, tc := range []struct {
		name string
		path string
		want netip.Addr
	}{
		{name: "/ns/a/sa/client", path: "/ns/a/sa/client", want: netip.MustParseAddr("127.0.0.1")},
		{name: "a waypoint", path: "/ns/shop/sa/waypoint", want: claimed.Addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svid := m.ca.SVID(t, tc.path)
			c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return m.dialAs(ctx, svid, netip.AddrPortFrom(webVIP, 8081), claimed)
			}}}
			before := len(m.upstreamForwarded())
			// /grpc.health.v1.Health/Check is allowed to anyone.
			if a := do(t, c, "GET", "http://web.shop/grpc.health.v1.Health/Check", nil); a.status != http.StatusOK {
				t.Fatalf("got %d %q", a.status, a.body)
			}
			fwd := m.upstreamForwarded()[before:]
			if len(fwd) != 1 || fwd[0].Addr() != tc.want {
				t.Fatalf("upstream Forwarded = %v, want for=%s", fwd, tc.want)
			}
		})
	}
}

func (m *testMesh) upstreamForwarded() []netip.AddrPort {
	m.upstream.mu.Lock()
	defer m.upstream.mu.Unlock()
	return append([]netip.AddrPort(nil), m.upstream.forwarded...)
}

// A tunnel addressed to the waypoint itself, or to nothing the state
// knows, is refused before it carries a byte.
func TestRefusedAuthorities(t *testing.T) {
	m := newTestMesh(t)
	for _, authority := range []string{"10.1.0.2:80", "10.9.9.9:80", "10.96.0.9:81"} {
		_, err := m.dial(t.Context(), netip.MustParseAddrPort(authority))
		if err == nil || hbone.StatusFor(err) != http.StatusBadRequest {
			t.Errorf("CONNECT %s: %v, want 400", authority, err)
		}
	}
}
