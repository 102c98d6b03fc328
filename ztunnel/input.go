package ztunnel

import (
	"fmt"
	"net/netip"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// Peer is who opened an inbound connection: a verified SPIFFE ID over
// HBONE, or nobody (plaintext arriving on 15006).
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

// inboundInput builds the L4 policy input of a connection from peer to the
// local workload at dst.
func inboundInput(snap *state.Snapshot, peer Peer, dst netip.AddrPort) (policy.Input, *state.Workload, error) {
	w, ok := snap.WorkloadByIP(dst.Addr())
	if !ok {
		return policy.Input{}, nil, fmt.Errorf("ztunnel: no local workload at %s", dst.Addr())
	}
	in := policy.Input{
		Layer:      policy.L4,
		Source:     policy.Source{Principal: peer.Principal, IP: peer.Addr.Addr().Unmap().String(), Port: int(peer.Addr.Port())},
		Connection: policy.Connection{MTLS: peer.Principal != ""},
		Destination: policy.Destination{
			IP: dst.Addr().Unmap().String(), Port: int(dst.Port()),
			Namespace: w.Namespace, Workload: w.Name, ServiceAccount: w.ServiceAccount, Labels: w.Labels,
		},
	}
	if peer.Remote.IsValid() {
		in.Source.RemoteIP = peer.Remote.String()
	}
	if svcs := snap.ServicesOf(w); len(svcs) > 0 {
		in.Destination.Service = svcs[0].Hostname
	}
	return in, w, nil
}
