package state

import (
	"net/netip"
	"testing"

	"github.com/regomesh/regomesh/policy"
)

const inputState = `
workloads:
- {name: web-1, namespace: shop, serviceAccount: web, ips: [10.0.0.1], labels: {app: web}}
- {name: api-1, namespace: shop, serviceAccount: api, ips: [10.0.0.3], labels: {app: api}}
- {name: legacy, namespace: old, ips: [10.0.5.1], protocol: NONE, labels: {app: legacy}}
services:
- {name: web, namespace: shop, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
`

func TestInboundInput(t *testing.T) {
	snap, err := Decode([]byte(inputState), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	peer := Peer{Principal: "spiffe://td/ns/shop/sa/api", Addr: netip.MustParseAddrPort("[::ffff:10.0.0.3]:40000")}
	in, w, err := snap.InboundInput(peer, netip.MustParseAddrPort("10.0.0.1:8080"))
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
	plain, _, _ := snap.InboundInput(Peer{Addr: netip.MustParseAddrPort("10.0.5.1:1234")}, netip.MustParseAddrPort("10.0.0.1:8080"))
	if plain.Connection.MTLS || plain.Source.Principal != "" {
		t.Errorf("plaintext input = %+v", plain)
	}
	if _, _, err := snap.InboundInput(peer, netip.MustParseAddrPort("10.9.9.9:80")); err == nil {
		t.Error("a destination that is not a local workload must be refused")
	}
}

// A forwarded address fills remote_ip only, never ip.
func TestInboundInputRemote(t *testing.T) {
	snap, err := Decode([]byte(inputState), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	peer := Peer{Principal: "spiffe://td/ns/shop/sa/waypoint", Addr: netip.MustParseAddrPort("10.0.0.9:40000"), Remote: netip.MustParseAddr("192.0.2.7")}
	in, _, err := snap.InboundInput(peer, netip.MustParseAddrPort("10.0.0.1:8080"))
	if err != nil || in.Source.IP != "10.0.0.9" || in.Source.RemoteIP != "192.0.2.7" {
		t.Errorf("input source = %+v, %v; want ip 10.0.0.9 and remote_ip 192.0.2.7", in.Source, err)
	}
}

func TestPassthroughInput(t *testing.T) {
	snap, err := Decode([]byte(inputState), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("10.0.0.1:40000")
	in := snap.PassthroughInput("spiffe://td/ns/shop/sa/web", src, netip.MustParseAddrPort("10.0.5.1:5432"))
	if in.Connection.MTLS || in.Source.IP != "10.0.0.1" || in.Destination.Workload != "legacy" || in.Destination.Labels["app"] != "legacy" || in.Destination.Port != 5432 {
		t.Errorf("passthrough to a known workload = %+v", in)
	}
	out := snap.PassthroughInput("spiffe://td/ns/shop/sa/web", src, netip.MustParseAddrPort("192.0.2.1:443"))
	if out.Destination.Workload != "" || out.Destination.IP != "192.0.2.1" || out.Destination.Port != 443 {
		t.Errorf("passthrough outside the state = %+v", out.Destination)
	}
	var none *Snapshot
	if in := none.PassthroughInput("p", src, netip.MustParseAddrPort("10.0.5.1:5432")); in.Destination.IP != "10.0.5.1" {
		t.Errorf("passthrough without a state = %+v", in.Destination)
	}
}
