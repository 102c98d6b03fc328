package state

import (
	"net/netip"
	"testing"

	"github.com/regomesh/regomesh/policy"
)

func TestServicePortProtocol(t *testing.T) {
	for _, tc := range []struct {
		name string
		port ServicePort
		want PortProtocol
	}{
		{name: "nothing declared", port: ServicePort{Port: 80}, want: PortUnknown},
		{name: "port name", port: ServicePort{Name: "http"}, want: PortHTTP},
		{name: "port name with suffix", port: ServicePort{Name: "grpc-api"}, want: PortGRPC},
		{name: "grpc-web is HTTP", port: ServicePort{Name: "grpc-web"}, want: PortHTTP},
		{name: "http2 name", port: ServicePort{Name: "http2-x"}, want: PortHTTP2},
		{name: "case-insensitive", port: ServicePort{Name: "HTTP-web"}, want: PortHTTP},
		{name: "tls is opaque", port: ServicePort{Name: "tls-db"}, want: PortTCP},
		{name: "unknown name", port: ServicePort{Name: "web"}, want: PortUnknown},
		{name: "appProtocol wins", port: ServicePort{Name: "tcp", AppProtocol: "http"}, want: PortHTTP},
		{name: "kubernetes h2c", port: ServicePort{AppProtocol: "kubernetes.io/h2c"}, want: PortHTTP2},
		{name: "unknown appProtocol falls back to the name", port: ServicePort{Name: "grpc", AppProtocol: "example.com/x"}, want: PortGRPC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.port.Protocol(); got != tc.want {
				t.Errorf("Protocol() = %q, want %q", got, tc.want)
			}
		})
	}
}

const waypointState = `
workloads:
- {name: web-1, namespace: shop, serviceAccount: web, ips: [10.0.0.1], labels: {app: web}}
- {name: wp, namespace: shop, serviceAccount: waypoint, ips: [10.0.0.2]}
services:
- {name: web, namespace: shop, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080, name: http}, {port: 9090, appProtocol: grpc}], selector: {app: web}, waypoint: shop/wp}
`

func TestWaypointInput(t *testing.T) {
	snap, err := Decode([]byte(waypointState), Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	peer := Peer{Principal: "spiffe://td/ns/a/sa/client", Addr: netip.MustParseAddrPort("10.0.9.9:40000")}
	req := &policy.Request{Method: "GET", Path: "/x", Host: "web.shop", Protocol: "HTTP/1.1"}
	in, target, err := snap.WaypointInput(peer, netip.MustParseAddrPort("10.96.0.1:80"), req)
	if err != nil {
		t.Fatal(err)
	}
	if in.Layer != policy.L7 || in.Request != req || in.Destination.Service != "web.shop.svc.cluster.local" ||
		in.Destination.Namespace != "shop" || in.Destination.Port != 80 || in.Source.IP != "10.0.9.9" || !in.Connection.MTLS {
		t.Errorf("service input = %+v", in)
	}
	if target.Service == nil || target.Port.TargetPort != 8080 || target.Protocol() != PortHTTP {
		t.Errorf("service target = %+v", target)
	}
	if err := in.Prepare(); err != nil {
		t.Errorf("the input does not validate: %v", err)
	}
	if _, target, _ := snap.WaypointInput(peer, netip.MustParseAddrPort("10.96.0.1:9090"), nil); target.Protocol() != PortGRPC {
		t.Errorf("grpc port protocol = %q", target.Protocol())
	}
	l4, target, err := snap.WaypointInput(peer, netip.MustParseAddrPort("10.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if l4.Layer != policy.L4 || l4.Request != nil || l4.Destination.Workload != "web-1" || l4.Destination.Labels["app"] != "web" ||
		target.Workload == nil || target.Protocol() != PortUnknown {
		t.Errorf("workload input = %+v, target %+v", l4, target)
	}
	for _, dst := range []string{"10.96.0.1:81", "10.9.9.9:80"} {
		if _, _, err := snap.WaypointInput(peer, netip.MustParseAddrPort(dst), req); err == nil {
			t.Errorf("WaypointInput(%s) resolved; want an error", dst)
		}
	}
}
