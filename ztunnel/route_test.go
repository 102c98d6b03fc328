package ztunnel

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/regomesh/regomesh/ztunnel/state"
)

const meshState = `
workloads:
- {name: web-1, namespace: shop, serviceAccount: web, ips: [10.0.0.1], labels: {app: web}}
- {name: web-2, namespace: shop, serviceAccount: web, ips: [10.0.0.2], labels: {app: web}}
- {name: api-1, namespace: shop, serviceAccount: api, ips: [10.0.0.3], labels: {app: api}, waypoint: shop/waypoint}
- {name: waypoint, namespace: shop, serviceAccount: waypoint, ips: [10.0.0.9]}
- {name: legacy, namespace: old, ips: [10.0.5.1], protocol: NONE, labels: {app: legacy}}
services:
- {name: web, namespace: shop, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
- {name: api, namespace: shop, vips: [10.96.0.3], ports: [{port: 80}], selector: {app: api}, waypoint: shop/waypoint}
- {name: legacy, namespace: old, vips: [10.96.0.5], ports: [{port: 80}], selector: {app: legacy}}
- {name: empty, namespace: shop, vips: [10.96.0.6], ports: [{port: 80}], selector: {app: none}}
`

func router(t *testing.T) *Router {
	t.Helper()
	snap, err := state.Decode([]byte(meshState), state.Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	var p atomic.Pointer[state.Snapshot]
	p.Store(snap)
	return NewRouter(&p)
}

func TestRoute(t *testing.T) {
	r := router(t)
	cases := []struct {
		name                  string
		dst                   string
		kind                  RouteKind
		dial, authority, peer string
	}{
		{"pod in the mesh", "10.0.0.1:8080", RouteWorkload, "10.0.0.1:15008", "10.0.0.1:8080", "spiffe://td/ns/shop/sa/web"},
		{"pod behind a waypoint", "10.0.0.3:80", RouteWaypoint, "10.0.0.9:15008", "10.0.0.3:80", "spiffe://td/ns/shop/sa/waypoint"},
		{"service behind a waypoint keeps the vip", "10.96.0.3:80", RouteWaypoint, "10.0.0.9:15008", "10.96.0.3:80", "spiffe://td/ns/shop/sa/waypoint"},
		{"pod outside the mesh", "10.0.5.1:80", RoutePassthrough, "10.0.5.1:80", "10.0.5.1:80", ""},
		{"service outside the mesh", "10.96.0.5:80", RoutePassthrough, "10.0.5.1:80", "10.0.5.1:80", ""},
		{"unknown address", "192.0.2.1:443", RoutePassthrough, "192.0.2.1:443", "192.0.2.1:443", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Route(netip.MustParseAddrPort(tc.dst))
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tc.kind || got.Dial.String() != tc.dial || got.Authority.String() != tc.authority || got.Identity != tc.peer {
				t.Errorf("route = %v dial %v authority %v identity %q", got.Kind, got.Dial, got.Authority, got.Identity)
			}
		})
	}
}

func TestRouteServiceBalancesAndMapsPorts(t *testing.T) {
	r := router(t)
	seen := map[string]int{}
	for range 10 {
		got, err := r.Route(netip.MustParseAddrPort("10.96.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		if got.Kind != RouteService || got.Authority.Port() != 8080 || got.Dial.Port() != HBONEPort {
			t.Fatalf("route = %+v", got)
		}
		seen[got.Workload.Name]++
	}
	if seen["web-1"] != 5 || seen["web-2"] != 5 {
		t.Errorf("endpoints used %v, want 5 each", seen)
	}
}

func TestRouteErrors(t *testing.T) {
	r := router(t)
	if _, err := r.Route(netip.MustParseAddrPort("10.96.0.6:80")); err == nil {
		t.Error("a service without endpoints must not route")
	}
	if _, err := r.Route(netip.MustParseAddrPort("10.96.0.1:81")); err == nil {
		t.Error("a port the service does not have must not route")
	}
	var empty atomic.Pointer[state.Snapshot]
	if _, err := NewRouter(&empty).Route(netip.MustParseAddrPort("10.0.0.1:80")); err == nil {
		t.Error("no state must not route")
	}
}

// BenchmarkRouteWaypoint routes a connection to a workload behind a
// waypoint in a state of 5,000 workloads: the waypoint is found by name,
// not by walking the workloads (which the route did per connection).
//
//	go test -run XXX -bench RouteWaypoint ./ztunnel/
func BenchmarkRouteWaypoint(b *testing.B) {
	const n = 5000
	var ws []*state.Workload
	for i := range n {
		ws = append(ws, &state.Workload{
			UID: fmt.Sprint(i), Name: fmt.Sprintf("pod-%d", i), Namespace: "shop", ServiceAccount: "default",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)})}, Protocol: state.HBONE,
			Waypoint: "shop/waypoint", TrustDomain: "td",
		})
	}
	ws = append(ws, &state.Workload{UID: "wp", Name: "waypoint", Namespace: "shop", ServiceAccount: "waypoint",
		IPs: []netip.Addr{netip.MustParseAddr("10.2.0.1")}, Protocol: state.HBONE, TrustDomain: "td"})
	snap, err := state.NewSnapshot(ws, nil)
	if err != nil {
		b.Fatal(err)
	}
	var p atomic.Pointer[state.Snapshot]
	p.Store(snap)
	r := NewRouter(&p)
	dst := netip.AddrPortFrom(ws[0].IPs[0], 8080)
	for b.Loop() {
		route, err := r.Route(dst)
		if err != nil || route.Kind != RouteWaypoint {
			b.Fatalf("route = %+v, %v; want the waypoint", route, err)
		}
	}
}
