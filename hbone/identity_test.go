package hbone

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/internal/testpki"
)

// TestIdentityRefusals: every way a tunnel must fail closed on identity.
// None of them may reach the handler.
func TestIdentityRefusals(t *testing.T) {
	m := newMesh(t)
	other := testpki.New(t, "other.test")
	impostor := testpki.New(t, "td.test") // same trust domain name, different key
	reached := make(chan struct{}, 10)
	ts := startServer(t, m, HandlerFunc(func(_ context.Context, tun *Tunnel) {
		reached <- struct{}{}
		tun.Reject(ErrDenied)
	}))
	dst := netip.MustParseAddrPort("10.1.0.9:8080")

	for _, tc := range []struct {
		name    string
		req     func(Request) Request
		bundles x509bundle.Source // the client's trust, if not the mesh's
		wantErr error
	}{
		{name: "client from another trust domain", req: func(r Request) Request {
			r.Source = other.SVID(t, "/ns/a/sa/client")
			return r
		}},
		{name: "client signed by an unknown CA of the same trust domain", req: func(r Request) Request {
			r.Source = impostor.SVID(t, "/ns/a/sa/client")
			return r
		}},
		{name: "expired client certificate", req: func(r Request) Request {
			r.Source = m.ca.SVIDValid(t, "/ns/a/sa/client", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
			return r
		}},
		{name: "client certificate not yet valid", req: func(r Request) Request {
			r.Source = m.ca.SVIDValid(t, "/ns/a/sa/client", time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))
			return r
		}},
		{name: "server is not the expected peer", req: func(r Request) Request {
			r.Peer = idOf("spiffe://td.test/ns/b/sa/someone-else")
			return r
		}},
		{name: "client does not trust the server's trust domain", bundles: other.Bundle()},
		{name: "no SVID source", wantErr: ErrNoSVID, req: func(r Request) Request {
			r.Source = nil
			return r
		}},
		{name: "SVID source fails", wantErr: ErrNoSVID, req: func(r Request) Request {
			r.Source = svidSource{err: errors.New("agent unreachable")}
			return r
		}},
		{name: "SVID source returns nothing", wantErr: ErrNoSVID, req: func(r Request) Request {
			r.Source = svidSource{svid: &x509svid.SVID{}}
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newTestPool(t, m, func(c *PoolConfig) {
				if tc.bundles != nil {
					c.Bundle = tc.bundles
				}
			})
			req := m.request(ts, dst)
			if tc.req != nil {
				req = tc.req(req)
			}
			before := ts.accepted.Load()
			s, err := pool.Dial(testContext(t), req)
			if err == nil {
				s.Close()
				t.Fatal("Dial succeeded, want a refusal")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Dial error = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(tc.wantErr, ErrNoSVID) && ts.accepted.Load() != before {
				t.Error("a connection was opened without an SVID")
			}
			t.Logf("refused: %v", err)
		})
	}
	select {
	case <-reached:
		t.Error("a refused client reached the handler")
	default:
	}
}
