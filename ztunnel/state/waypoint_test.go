package state

import (
	"net/netip"
	"testing"
)

// A waypoint is a workload that a workload or a service names as its
// waypoint; its identity is what a Forwarded header is believed from.
func TestIsWaypoint(t *testing.T) {
	ip := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	snap, err := NewSnapshot([]*Workload{
		{Name: "wp", Namespace: "shop", ServiceAccount: "shop-waypoint", TrustDomain: "td", IPs: ip("10.0.0.1")},
		{Name: "svc-wp", Namespace: "pay", ServiceAccount: "pay-waypoint", TrustDomain: "td", IPs: ip("10.0.0.2")},
		{Name: "web", Namespace: "shop", ServiceAccount: "web", TrustDomain: "td", IPs: ip("10.0.0.3"), Waypoint: "shop/wp"},
		{Name: "api", Namespace: "pay", ServiceAccount: "api", TrustDomain: "td", IPs: ip("10.0.0.4"), Waypoint: "shop/missing"},
	}, []*Service{{Name: "pay", Namespace: "pay", Waypoint: "pay/svc-wp"}})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"spiffe://td/ns/shop/sa/shop-waypoint": true,
		"spiffe://td/ns/pay/sa/pay-waypoint":   true,
		"spiffe://td/ns/shop/sa/web":           false,
		"spiffe://td/ns/pay/sa/api":            false,
		"":                                     false,
	} {
		if got := snap.IsWaypoint(id); got != want {
			t.Errorf("IsWaypoint(%q) = %v, want %v", id, got, want)
		}
	}
}
