package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// TypeURL is the type of every resource on the stream: Istio's Address,
// which holds either a workload or a service.
const TypeURL = "type.googleapis.com/istio.workload.Address"

// The extensions carrying what Istio's types have no field for, each a
// google.protobuf.Struct of strings.
const (
	// LabelsExtension holds a workload's labels, which Rego policies read
	// (Istio resolves selectors in istiod instead).
	LabelsExtension = "regomesh.io/labels"
	// SelectorExtension holds a service's selector, from which ztunnel
	// finds its endpoints.
	SelectorExtension = "regomesh.io/selector"
)

// ZtunnelPathPrefix starts the path of every ztunnel's SPIFFE ID; the
// rest is its node's name: spiffe://<trust domain>/regomesh/ztunnel/<node>.
// The controller takes a ztunnel's node from this ID, never from what the
// ztunnel says.
const ZtunnelPathPrefix = "/regomesh/ztunnel/"

// NodeMetadata is the Node metadata field in which a ztunnel names the
// node it subscribes for, as Istio's ztunnel does.
const NodeMetadata = "NODE_NAME"

// ZtunnelID is the SPIFFE ID of node's ztunnel.
func ZtunnelID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromPath(td, ZtunnelPathPrefix+node)
}

// hbonePort is where a waypoint accepts tunnels.
const hbonePort = 15008

// WorkloadName is a workload's resource name: its UID, as in Istio.
func WorkloadName(w *state.Workload) string { return w.UID }

// ServiceName is a service's resource name, "<namespace>/<hostname>", as
// in Istio.
func ServiceName(svc *state.Service) string { return svc.Namespace + "/" + svc.Hostname }

// EncodeWorkload is w on the wire; services are those selecting it, which
// become its services map (Istio's way of naming a workload an endpoint).
func EncodeWorkload(w *state.Workload, services []*state.Service) *workloadapi.Address {
	wl := &workloadapi.Workload{
		Uid: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
		TrustDomain: w.TrustDomain, Node: w.Node, WorkloadType: workloadapi.WorkloadType_POD,
		Waypoint: encodeWaypoint(w.Waypoint),
	}
	for _, ip := range w.IPs {
		wl.Addresses = append(wl.Addresses, ip.AsSlice())
	}
	if w.Protocol == state.HBONE {
		wl.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if len(services) > 0 {
		wl.Services = map[string]*workloadapi.PortList{}
		for _, svc := range services {
			wl.Services[ServiceName(svc)] = &workloadapi.PortList{Ports: encodePorts(svc.Ports)}
		}
	}
	wl.Extensions = encodeStrings(LabelsExtension, w.Labels)
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: wl}}
}

// EncodeService is svc on the wire.
func EncodeService(svc *state.Service) *workloadapi.Address {
	s := &workloadapi.Service{
		Name: svc.Name, Namespace: svc.Namespace, Hostname: svc.Hostname,
		Ports: encodePorts(svc.Ports), Waypoint: encodeWaypoint(svc.Waypoint),
	}
	for _, vip := range svc.VIPs {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: vip.AsSlice()})
	}
	s.Extensions = encodeStrings(SelectorExtension, svc.Selector)
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

// encodeWaypoint names a waypoint workload ("<namespace>/<name>") by
// NamespacedHostname, the hostname holding the workload's name.
func encodeWaypoint(ref string) *workloadapi.GatewayAddress {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok {
		return nil
	}
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: name}},
		HboneMtlsPort: hbonePort,
	}
}

func encodePorts(ports []state.ServicePort) []*workloadapi.Port {
	out := make([]*workloadapi.Port, 0, len(ports))
	for _, p := range ports {
		out = append(out, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort), AppProtocol: appProtocols[p.Protocol()]})
	}
	return out
}

// appProtocols map what a port carries to Istio's enum; the reverse
// gives back the same state.ServicePort.Protocol (the port's name, which
// Istio's type lacks, is not carried).
var (
	appProtocols = map[state.PortProtocol]workloadapi.AppProtocol{
		state.PortHTTP: workloadapi.AppProtocol_HTTP11, state.PortHTTP2: workloadapi.AppProtocol_HTTP2,
		state.PortGRPC: workloadapi.AppProtocol_GRPC, state.PortTCP: workloadapi.AppProtocol_TCP,
	}
	appProtocolNames = map[workloadapi.AppProtocol]string{
		workloadapi.AppProtocol_HTTP11: "http", workloadapi.AppProtocol_HTTP2: "http2",
		workloadapi.AppProtocol_GRPC: "grpc", workloadapi.AppProtocol_TCP: "tcp", workloadapi.AppProtocol_TLS: "tls",
	}
)

func encodeStrings(name string, m map[string]string) []*workloadapi.Extension {
	if len(m) == 0 {
		return nil
	}
	fields := make(map[string]*structpb.Value, len(m))
	for k, v := range m {
		fields[k] = structpb.NewStringValue(v)
	}
	// Deterministic, so equal labels encode to equal bytes and an
	// unchanged workload keeps its version.
	config := new(anypb.Any)
	if err := anypb.MarshalFrom(config, &structpb.Struct{Fields: fields}, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("xds: a Struct of strings does not marshal: %v", err)) // cannot happen
	}
	return []*workloadapi.Extension{{Name: name, Config: config}}
}

// Resource is one decoded resource: a workload or a service.
type Resource struct {
	Workload *state.Workload
	Service  *state.Service
}

// Decode converts and validates an Address; trustDomain fills a workload
// that names none.
func Decode(a *workloadapi.Address, trustDomain string) (Resource, error) {
	switch a.GetType().(type) {
	case *workloadapi.Address_Workload:
		w, err := decodeWorkload(a.GetWorkload(), trustDomain)
		return Resource{Workload: w}, err
	case *workloadapi.Address_Service:
		svc, err := decodeService(a.GetService())
		return Resource{Service: svc}, err
	}
	return Resource{}, errors.New("neither a workload nor a service")
}

func decodeWorkload(wl *workloadapi.Workload, trustDomain string) (*state.Workload, error) {
	if wl.GetUid() == "" || wl.GetName() == "" || wl.GetNamespace() == "" {
		return nil, errors.New("workload: uid, name and namespace are required")
	}
	w := &state.Workload{
		UID: wl.GetUid(), Name: wl.GetName(), Namespace: wl.GetNamespace(), ServiceAccount: wl.GetServiceAccount(),
		Node: wl.GetNode(), TrustDomain: wl.GetTrustDomain(),
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if w.TrustDomain == "" {
		w.TrustDomain = trustDomain
	}
	switch wl.GetTunnelProtocol() {
	case workloadapi.TunnelProtocol_HBONE:
		w.Protocol = state.HBONE
	case workloadapi.TunnelProtocol_NONE:
		w.Protocol = state.None
	default:
		return nil, fmt.Errorf("workload %s: tunnel protocol %s is not HBONE or NONE", w.UID, wl.GetTunnelProtocol())
	}
	ips, err := decodeIPs(wl.GetAddresses())
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", w.UID, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("workload %s: no address (a workload by hostname is not supported)", w.UID)
	}
	w.IPs = ips
	if w.Waypoint, err = decodeWaypoint(wl.GetWaypoint()); err != nil {
		return nil, fmt.Errorf("workload %s: %w", w.UID, err)
	}
	if w.Labels, err = decodeStrings(LabelsExtension, wl.GetExtensions()); err != nil {
		return nil, fmt.Errorf("workload %s: %w", w.UID, err)
	}
	return w, nil
}

func decodeService(s *workloadapi.Service) (*state.Service, error) {
	if s.GetName() == "" || s.GetNamespace() == "" || s.GetHostname() == "" {
		return nil, errors.New("service: name, namespace and hostname are required")
	}
	svc := &state.Service{Name: s.GetName(), Namespace: s.GetNamespace(), Hostname: s.GetHostname()}
	name := ServiceName(svc)
	raw := make([][]byte, 0, len(s.GetAddresses()))
	for _, a := range s.GetAddresses() {
		if a.Length != nil {
			return nil, fmt.Errorf("service %s: a CIDR address is not supported", name)
		}
		raw = append(raw, a.GetAddress())
	}
	var err error
	if svc.VIPs, err = decodeIPs(raw); err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	for _, p := range s.GetPorts() {
		sp := state.ServicePort{Port: int(p.GetServicePort()), TargetPort: int(p.GetTargetPort()), AppProtocol: appProtocolNames[p.GetAppProtocol()]}
		if sp.TargetPort == 0 {
			sp.TargetPort = sp.Port
		}
		if sp.Port < 1 || sp.Port > 65535 || sp.TargetPort > 65535 {
			return nil, fmt.Errorf("service %s: port %d -> %d: ports are 1-65535", name, sp.Port, sp.TargetPort)
		}
		svc.Ports = append(svc.Ports, sp)
	}
	if svc.Waypoint, err = decodeWaypoint(s.GetWaypoint()); err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	if svc.Selector, err = decodeStrings(SelectorExtension, s.GetExtensions()); err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	return svc, nil
}

// decodeIPs refuses what local config refuses (state.NotRoutable): such
// an address would let traffic that is not a pod's pass for that pod's.
func decodeIPs(raw [][]byte) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(raw))
	for _, b := range raw {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("address of %d bytes is not IPv4 or IPv6", len(b))
		}
		ip = ip.Unmap()
		if kind := state.NotRoutable(ip); kind != "" {
			return nil, fmt.Errorf("address %s is not a routable unicast address: it is %s", ip, kind)
		}
		out = append(out, ip)
	}
	return out, nil
}

func decodeWaypoint(gw *workloadapi.GatewayAddress) (string, error) {
	if gw == nil {
		return "", nil
	}
	h := gw.GetHostname()
	if h == nil {
		return "", errors.New("a waypoint by address is not supported: name its workload by namespace and hostname")
	}
	if h.GetNamespace() == "" || h.GetHostname() == "" || strings.Contains(h.GetHostname(), "/") {
		return "", fmt.Errorf("waypoint %q/%q is not a namespace and a workload name", h.GetNamespace(), h.GetHostname())
	}
	return h.GetNamespace() + "/" + h.GetHostname(), nil
}

func decodeStrings(name string, exts []*workloadapi.Extension) (map[string]string, error) {
	for _, ext := range exts {
		if ext.GetName() != name {
			continue
		}
		var s structpb.Struct
		if err := ext.GetConfig().UnmarshalTo(&s); err != nil {
			return nil, fmt.Errorf("extension %s: %w", name, err)
		}
		if len(s.GetFields()) == 0 {
			return nil, nil
		}
		out := make(map[string]string, len(s.GetFields()))
		for k, val := range s.GetFields() {
			v, ok := val.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return nil, fmt.Errorf("extension %s: %s is not a string", name, k)
			}
			out[k] = v.StringValue
		}
		return out, nil
	}
	return nil, nil
}
