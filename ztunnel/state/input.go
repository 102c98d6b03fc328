package state

import (
	"fmt"
	"net/netip"

	"github.com/regomesh/regomesh/policy"
)

// Peer is who opened a connection: a verified SPIFFE ID over HBONE, or
// nobody (plaintext arriving on 15006).
type Peer struct {
	// Principal is the verified SPIFFE ID; empty for plaintext.
	Principal string
	// Addr is the connection's source address: the socket's peer, never
	// what the peer claims.
	Addr netip.AddrPort
	// Remote is the original client's address that a waypoint forwarded
	// (source.remote_ip); zero for any other peer.
	Remote netip.Addr
}

// InboundInput is the L4 policy input of a connection from peer to the
// workload at dst, with the destination's facts (labels, service account,
// service) from this state. It is the one builder of the mesh's inputs:
// ztunnel decides inbound connections with it, and `regomesh policy
// check --from/--to` and the demo describe connections with it, so the
// dry-run decides exactly as the mesh does.
func (s *Snapshot) InboundInput(peer Peer, dst netip.AddrPort) (policy.Input, *Workload, error) {
	w, ok := s.WorkloadByIP(dst.Addr().Unmap())
	if !ok {
		return policy.Input{}, nil, fmt.Errorf("state: no workload at %s", dst.Addr())
	}
	in := policy.Input{
		Layer:       policy.L4,
		Source:      source(peer.Principal, peer.Addr),
		Connection:  policy.Connection{MTLS: peer.Principal != ""},
		Destination: s.destination(w, dst),
	}
	if peer.Remote.IsValid() {
		in.Source.RemoteIP = peer.Remote.String()
	}
	return in, w, nil
}

// PassthroughInput is the L4 policy input of a mesh workload (identity
// principal, address src) reaching dst in plaintext, outside the mesh:
// the destination's facts come from this state when it knows dst.
func (s *Snapshot) PassthroughInput(principal string, src, dst netip.AddrPort) policy.Input {
	in := policy.Input{
		Layer:       policy.L4,
		Source:      source(principal, src),
		Destination: policy.Destination{IP: dst.Addr().Unmap().String(), Port: int(dst.Port())},
	}
	if s == nil {
		return in
	}
	if w, ok := s.WorkloadByIP(dst.Addr().Unmap()); ok {
		in.Destination = s.destination(w, dst)
	}
	return in
}

func source(principal string, addr netip.AddrPort) policy.Source {
	src := policy.Source{Principal: principal, Port: int(addr.Port())}
	if addr.Addr().IsValid() {
		src.IP = addr.Addr().Unmap().String()
	}
	return src
}

// destination describes workload w reached at dst.
func (s *Snapshot) destination(w *Workload, dst netip.AddrPort) policy.Destination {
	d := policy.Destination{
		IP: dst.Addr().Unmap().String(), Port: int(dst.Port()),
		Namespace: w.Namespace, Workload: w.Name, ServiceAccount: w.ServiceAccount, Labels: w.Labels,
	}
	if svcs := s.ServicesOf(w); len(svcs) > 0 {
		d.Service = svcs[0].Hostname
	}
	return d
}

// Target is what a CONNECT authority names at a waypoint: a service, by
// one of its VIPs and one of its ports, or a workload, by one of its IPs.
type Target struct {
	// Addr is the authority as the client sent it.
	Addr netip.AddrPort
	// Service and Port are set when Addr is a service VIP:port.
	Service *Service
	Port    ServicePort
	// Workload is set when Addr is a workload IP:port.
	Workload *Workload
}

// Protocol is the target's declared protocol: the service port's (see
// ServicePort.Protocol); PortUnknown for a workload addressed directly,
// which declares none.
func (t Target) Protocol() PortProtocol {
	if t.Service == nil {
		return PortUnknown
	}
	return t.Port.Protocol()
}

// ResolveTarget finds what addr names: a service VIP with that port, or a
// workload IP.
func (s *Snapshot) ResolveTarget(addr netip.AddrPort) (Target, error) {
	ip := addr.Addr().Unmap()
	if svc, ok := s.ServiceByVIP(ip); ok {
		port, ok := svc.Port(addr.Port())
		if !ok {
			return Target{}, fmt.Errorf("state: service %s has no port %d", svc.Hostname, addr.Port())
		}
		return Target{Addr: addr, Service: svc, Port: port}, nil
	}
	if w, ok := s.WorkloadByIP(ip); ok {
		return Target{Addr: addr, Workload: w}, nil
	}
	return Target{}, fmt.Errorf("state: nothing at %s: neither a service VIP nor a workload IP", addr)
}

// WaypointInput is the policy input of what a waypoint receives from peer
// for dst (a service VIP:port or a workload IP:port): a connection at
// layer l4 when req is nil (opaque TCP), else the request at layer l7.
// The source is built as InboundInput builds it; the destination is the
// workload's facts, or, for a service, its namespace and hostname (the
// endpoint is chosen after the decision, so policies on a service match
// destination.service, as translated targetRefs do).
func (s *Snapshot) WaypointInput(peer Peer, dst netip.AddrPort, req *policy.Request) (policy.Input, Target, error) {
	t, err := s.ResolveTarget(dst)
	if err != nil {
		return policy.Input{}, Target{}, err
	}
	in := policy.Input{
		Layer:      policy.L4,
		Source:     source(peer.Principal, peer.Addr),
		Connection: policy.Connection{MTLS: peer.Principal != ""},
	}
	if peer.Remote.IsValid() {
		in.Source.RemoteIP = peer.Remote.String()
	}
	if req != nil {
		in.Layer, in.Request = policy.L7, req
	}
	if t.Workload != nil {
		in.Destination = s.destination(t.Workload, dst)
	} else {
		in.Destination = policy.Destination{
			IP: dst.Addr().Unmap().String(), Port: int(dst.Port()),
			Namespace: t.Service.Namespace, Service: t.Service.Hostname,
		}
	}
	return in, t, nil
}
