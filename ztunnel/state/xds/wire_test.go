package xds

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestRoundTrip(t *testing.T) {
	svc := &state.Service{
		Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
		VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00::1")},
		Ports: []state.ServicePort{
			{Port: 80, TargetPort: 8080, AppProtocol: "http"}, {Port: 81, TargetPort: 81, AppProtocol: "http2"},
			{Port: 82, TargetPort: 82, AppProtocol: "grpc"}, {Port: 5432, TargetPort: 5432, AppProtocol: "tcp"},
			{Port: 9000, TargetPort: 9000},
		},
		Selector: map[string]string{"app": "web"}, Waypoint: "shop/waypoint-0",
	}
	tests := []struct {
		name string
		in   Resource
	}{
		{name: "workload", in: Resource{Workload: &state.Workload{
			UID: "u-1", Name: "web-0", Namespace: "shop", ServiceAccount: "web", Node: "node-1", TrustDomain: "td.test",
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.5")}, Labels: map[string]string{"app": "web", "v": "2"},
			Protocol: state.HBONE, Waypoint: "shop/waypoint-0",
		}}},
		{name: "workload outside the mesh", in: Resource{Workload: &state.Workload{
			UID: "u-2", Name: "legacy", Namespace: "shop", ServiceAccount: "default", TrustDomain: "td.test",
			IPs: []netip.Addr{netip.MustParseAddr("fd00::5")}, Protocol: state.None,
		}}},
		{name: "service", in: Resource{Service: svc}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addr *workloadapi.Address
			if tt.in.Workload != nil {
				addr = EncodeWorkload(tt.in.Workload, []*state.Service{svc})
			} else {
				addr = EncodeService(tt.in.Service)
			}
			b, err := proto.Marshal(addr)
			if err != nil {
				t.Fatal(err)
			}
			var back workloadapi.Address
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			got, err := Decode(&back, "td.test")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.in) {
				t.Errorf("round trip:\n got %+v %+v\nwant %+v %+v", got.Workload, got.Service, tt.in.Workload, tt.in.Service)
			}
		})
	}
}

func TestWorkloadServices(t *testing.T) {
	svc := &state.Service{Name: "web", Namespace: "shop", Hostname: "web.shop", Ports: []state.ServicePort{{Port: 80, TargetPort: 8080}}}
	w := &state.Workload{UID: "u", Name: "w", Namespace: "shop", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}}
	got := EncodeWorkload(w, []*state.Service{svc}).GetWorkload().GetServices()
	if ports := got["shop/web.shop"].GetPorts(); len(got) != 1 || len(ports) != 1 || ports[0].GetServicePort() != 80 || ports[0].GetTargetPort() != 8080 {
		t.Errorf("services map %v: want shop/web.shop with port 80 -> 8080, as Istio names a workload an endpoint", got)
	}
}

func TestDecodeRefuses(t *testing.T) {
	workload := func(edit func(*workloadapi.Workload)) *workloadapi.Address {
		wl := &workloadapi.Workload{Uid: "u", Name: "w", Namespace: "ns", Addresses: [][]byte{{10, 1, 0, 1}}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE}
		edit(wl)
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: wl}}
	}
	service := func(edit func(*workloadapi.Service)) *workloadapi.Address {
		s := &workloadapi.Service{Name: "s", Namespace: "ns", Hostname: "s.ns"}
		edit(s)
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	labels := EncodeWorkload(&state.Workload{Labels: map[string]string{"a": "b"}}, nil).GetWorkload().GetExtensions()
	tests := []struct {
		name string
		addr *workloadapi.Address
		want string
	}{
		{name: "empty", addr: &workloadapi.Address{}, want: "neither a workload nor a service"},
		{name: "no uid", addr: workload(func(w *workloadapi.Workload) { w.Uid = "" }), want: "uid, name and namespace are required"},
		{name: "loopback", addr: workload(func(w *workloadapi.Workload) { w.Addresses = [][]byte{{127, 0, 0, 1}} }), want: "127.0.0.1 is not a routable"},
		{name: "short address", addr: workload(func(w *workloadapi.Workload) { w.Addresses = [][]byte{{10, 1}} }), want: "2 bytes"},
		{name: "no address", addr: workload(func(w *workloadapi.Workload) { w.Addresses = nil }), want: "no address"},
		{name: "legacy mtls", addr: workload(func(w *workloadapi.Workload) { w.TunnelProtocol = workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS }), want: "not HBONE or NONE"},
		{name: "waypoint by address", addr: workload(func(w *workloadapi.Workload) {
			w.Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: []byte{10, 0, 0, 1}}}}
		}), want: "waypoint by address"},
		{name: "labels not strings", addr: workload(func(w *workloadapi.Workload) {
			w.Extensions = []*workloadapi.Extension{{Name: SelectorExtension, Config: labels[0].GetConfig()}, {Name: LabelsExtension, Config: nil}}
		}), want: "extension regomesh.io/labels"},
		{name: "service without hostname", addr: service(func(s *workloadapi.Service) { s.Hostname = "" }), want: "hostname are required"},
		{name: "service port 0", addr: service(func(s *workloadapi.Service) { s.Ports = []*workloadapi.Port{{ServicePort: 0}} }), want: "ports are 1-65535"},
		{name: "service CIDR", addr: service(func(s *workloadapi.Service) {
			n := uint32(24)
			s.Addresses = []*workloadapi.NetworkAddress{{Address: []byte{10, 96, 0, 0}, Length: &n}}
		}), want: "CIDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.addr, "td.test")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// FuzzDecode: a controller's bytes never panic the decoder, and what it
// accepts encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	w := &state.Workload{UID: "u", Name: "w", Namespace: "ns", ServiceAccount: "sa", TrustDomain: "td", Protocol: state.HBONE,
		IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}, Labels: map[string]string{"a": "b"}, Waypoint: "ns/wp"}
	svc := &state.Service{Name: "s", Namespace: "ns", Hostname: "s.ns", Selector: map[string]string{"a": "b"},
		VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}, Ports: []state.ServicePort{{Port: 80, TargetPort: 80}}}
	for _, a := range []*workloadapi.Address{EncodeWorkload(w, []*state.Service{svc}), EncodeService(svc)} {
		b, _ := proto.Marshal(a)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var addr workloadapi.Address
		if proto.Unmarshal(b, &addr) != nil {
			return
		}
		r, err := Decode(&addr, "td")
		if err != nil {
			return
		}
		var again *workloadapi.Address
		if r.Workload != nil {
			again = EncodeWorkload(r.Workload, nil)
		} else {
			again = EncodeService(r.Service)
		}
		r2, err := Decode(again, "td")
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("re-encoded %+v %+v decodes to %+v %+v (%v)", r.Workload, r.Service, r2.Workload, r2.Service, err)
		}
	})
}
