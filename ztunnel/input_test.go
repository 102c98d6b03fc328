package ztunnel

import (
	"net/netip"
	"testing"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestInboundInput(t *testing.T) {
	snap, err := state.Decode([]byte(meshState), state.Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	peer := Peer{Principal: "spiffe://td/ns/shop/sa/api", Addr: netip.MustParseAddrPort("[::ffff:10.0.0.3]:40000")}
	in, w, err := inboundInput(snap, peer, netip.MustParseAddrPort("10.0.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if w.Name != "web-1" || in.Destination.Service != "web.shop.svc.cluster.local" || in.Destination.Labels["app"] != "web" ||
		in.Source.IP != "10.0.0.3" || !in.Connection.MTLS || in.Layer != policy.L4 {
		t.Errorf("input = %+v", in)
	}
	if err := in.Prepare(); err != nil {
		t.Errorf("the input does not validate: %v", err)
	}
	plain, _, _ := inboundInput(snap, Peer{Addr: netip.MustParseAddrPort("10.0.5.1:1234")}, netip.MustParseAddrPort("10.0.0.1:8080"))
	if plain.Connection.MTLS || plain.Source.Principal != "" {
		t.Errorf("plaintext input = %+v", plain)
	}
	if _, _, err := inboundInput(snap, peer, netip.MustParseAddrPort("10.9.9.9:80")); err == nil {
		t.Error("a destination that is not a local workload must be refused")
	}
}
