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
