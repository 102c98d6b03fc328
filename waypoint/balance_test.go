package waypoint

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func endpoints(uids ...string) []*state.Workload {
	var eps []*state.Workload
	for _, uid := range uids {
		eps = append(eps, &state.Workload{UID: uid})
	}
	return eps
}

// fakeClock is the balancer's clock, moved by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// Between two endpoints the one with fewer requests in flight wins.
func TestBalancerLeastRequest(t *testing.T) {
	b := newBalancer(5, time.Minute)
	eps := endpoints("a", "b")
	for range 10 {
		b.statsOf(eps[0]).active.Add(1)
	}
	for i := range 10 {
		if got := b.pick(eps); got.UID != "b" {
			t.Fatalf("pick %d: %s, want b (a has 10 in flight, b %d)", i, got.UID, i)
		}
	}
	// Now both have 10: each gets picked.
	seen := map[string]bool{}
	for range 200 {
		ep := b.pick(eps)
		seen[ep.UID] = true
		b.done(ep, eps, false)
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("with equal load, picks went only to %v", seen)
	}
}

// Consecutive failures eject an endpoint for the base time, longer each
// time; a success in between resets the count; at most one in ten of a
// service's endpoints (at least one) is out at once; with every endpoint
// out, all are picked again.
func TestBalancerPassiveHealth(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	b := newBalancer(3, 30*time.Second)
	b.now = clock.now
	eps := endpoints("a", "b")
	fail := func(uid string, n int) {
		for range n {
			ep := eps[0]
			if uid == "b" {
				ep = eps[1]
			}
			b.statsOf(ep).active.Add(1)
			b.done(ep, eps, true)
		}
	}
	onlyPicks := func(want string) {
		t.Helper()
		for range 50 {
			ep := b.pick(eps)
			b.done(ep, eps, false)
			if ep.UID != want {
				t.Fatalf("picked %s, want only %s", ep.UID, want)
			}
		}
	}
	fail("a", 2)
	b.statsOf(eps[0]).active.Add(1)
	b.done(eps[0], eps, false) // a success: the count starts again
	fail("a", 2)
	if b.statsOf(eps[0]).ejectedUntil.Load() != 0 {
		t.Fatal("a ejected after 2+2 failures with a success between, want 3 in a row")
	}
	fail("a", 1)
	onlyPicks("b")
	fail("b", 3) // b fails too, but one of two endpoints is out already
	if b.statsOf(eps[1]).ejectedUntil.Load() != 0 {
		t.Fatal("b ejected while a is out: more than max(1, 10%) of the endpoints")
	}
	clock.t = clock.t.Add(30 * time.Second)
	b.done(b.pick(eps), eps, false) // a is back
	fail("a", 3)
	clock.t = clock.t.Add(59 * time.Second)
	onlyPicks("b") // the second ejection lasts twice as long
	clock.t = clock.t.Add(time.Second)
	seen := map[string]bool{}
	for range 100 {
		ep := b.pick(eps)
		seen[ep.UID] = true
		b.done(ep, eps, false)
	}
	if !seen["a"] {
		t.Error("a not back after its second ejection ended")
	}

	one := endpoints("only")
	b.statsOf(one[0]).ejectedUntil.Store(clock.t.Add(time.Hour).UnixNano())
	if got := b.pick(one); got.UID != "only" {
		t.Errorf("with every endpoint ejected, picked %v", got)
	}
}

// Through the waypoint: a service with one endpoint that no tunnel
// reaches. Under Istio's default retries every request that met it is
// retried on the healthy one, until it has failed five times in a row
// and is ejected; with retries disabled ({attempts: 0}) those five
// requests answer 503.
func TestBrokenEndpointEjected(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes string
		failed int // requests answered 503
	}{
		{name: "default retries", failed: 0},
		{name: "retries disabled", failed: DefaultEjectAfter, routes: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pair, namespace: shop}
spec:
  hosts: [pair]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: pair}}]
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMesh(t)
			m.loadRego(t, "package mesh.policies.test.p\n\nopen := true\n")
			if tc.routes != "" {
				m.loadRoutes(t, tc.routes)
			}
			c := m.http1Client(netip.AddrPortFrom(pairVIP, 80))
			var failures, afterLast int
			for i := range 60 {
				a := do(t, c, "GET", "http://pair.shop/x", nil)
				switch a.status {
				case http.StatusServiceUnavailable:
					failures++
					afterLast = 0
				case http.StatusOK:
					afterLast++
				default:
					t.Fatalf("request %d: %d %q", i, a.status, a.body)
				}
			}
			if failures != tc.failed || afterLast == 0 {
				t.Errorf("%d requests failed, then %d succeeded; want exactly %d failures and the rest served", failures, afterLast, tc.failed)
			}
			waitRequests(t, m, 60)
			retried := 0
			for _, e := range accessLines(t, m) {
				if e.Status == http.StatusServiceUnavailable && (e.Flags != FlagUpstream || e.DestinationWL != "shop/broken-1") {
					t.Errorf("a failure went elsewhere than broken-1: %+v", e)
				}
				if e.Attempts == 2 && e.Status == http.StatusOK && e.DestinationWL == "shop/web2-1" {
					retried++
				}
			}
			if want := DefaultEjectAfter - tc.failed; retried != want {
				t.Errorf("%d requests retried on web2-1 after broken-1 failed them, want %d (then broken-1 is ejected)", retried, want)
			}
			if n := metricSum(t, m, "regomesh_waypoint_retries_total", map[string]string{"reason": "connect-failure"}); n != float64(DefaultEjectAfter-tc.failed) {
				t.Errorf("regomesh_waypoint_retries_total{reason=connect-failure} = %v, want %d", n, DefaultEjectAfter-tc.failed)
			}
		})
	}
}
