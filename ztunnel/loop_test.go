package ztunnel

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestLoopGuard(t *testing.T) {
	snap, err := state.NewSnapshot([]*state.Workload{
		{Name: "web", Namespace: "shop", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := loopGuard{servicePorts: []uint16{15000, 9090}}
	for _, tc := range []struct {
		dst            string
		outbound, into bool // refused as an outbound destination; as an inbound one
	}{
		{"127.0.0.1:15001", true, true},
		{"[::1]:15008", true, true},
		{"0.0.0.0:15006", true, true},
		{"10.0.0.5:15001", true, true},
		{"10.0.0.5:15000", true, true},
		{"10.0.0.5:9090", true, true}, // a service port moved by flag
		{"[::ffff:10.0.0.5]:15008", true, true},
		{"10.0.0.5:8080", false, false},
		{"10.0.0.5:15020", false, false}, // not this ztunnel's metrics port
		{"127.0.0.1:8080", false, false},
		{"192.0.2.1:15008", false, true}, // outside the mesh: not ztunnel's
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		if err := g.outbound(snap, dst); (err != nil) != tc.outbound || err != nil && (!errors.Is(err, errLoop) || flagOf(err) != FlagLoop) {
			t.Errorf("outbound %s: %v, want refused=%v (LOOP)", dst, err, tc.outbound)
		}
		if err := g.inbound(dst); (err != nil) != tc.into || err != nil && flagOf(err) != FlagLoop {
			t.Errorf("inbound %s: %v, want refused=%v", dst, err, tc.into)
		}
	}
	var zero loopGuard // guards the capture listeners without a state
	if zero.outbound(nil, netip.MustParseAddrPort("127.0.0.1:15006")) == nil || zero.outbound(nil, netip.MustParseAddrPort("127.0.0.1:15000")) != nil {
		t.Error("the zero guard must refuse exactly the capture listeners")
	}
}
