package xds

import (
	"context"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// Kind is what sort of proxy a subscriber is.
type Kind string

const (
	Ztunnel  Kind = "ztunnel"
	Waypoint Kind = "waypoint"
)

// Proxy is a subscriber as its certificate proves it.
type Proxy struct {
	ID   spiffeid.ID
	Kind Kind
	// Node is a ztunnel's node, from its SPIFFE ID.
	Node string
}

// authenticate finds who is on the other end of the stream: the SPIFFE ID
// of its verified client certificate, a ztunnel's or a waypoint's.
func (s *Server) authenticate(ctx context.Context) (Proxy, error) {
	id, err := peerID(ctx)
	if err != nil {
		return Proxy{}, status.Error(codes.Unauthenticated, err.Error())
	}
	p, err := s.Identify(id)
	if err != nil {
		return Proxy{}, status.Error(codes.PermissionDenied, err.Error())
	}
	return p, nil
}

// Identify names the proxy that id, a verified SVID's SPIFFE ID, belongs
// to: a ztunnel (spiffe://<trust domain>/regomesh/ztunnel/<node>, its node
// from the ID) or a waypoint (a workload the current state names as some
// workload's or service's waypoint). Anything else is refused with an
// error wrapping ErrNotProxy. The state stream and the bundle server
// (controller/bundleserver) both identify their clients with it.
func (s *Server) Identify(id spiffeid.ID) (Proxy, error) {
	if id.TrustDomain() != s.cfg.TrustDomain {
		return Proxy{}, fmt.Errorf("%w: %s is not in trust domain %s", ErrNotProxy, id, s.cfg.TrustDomain)
	}
	if node, ok := strings.CutPrefix(id.Path(), wire.ZtunnelPathPrefix); ok && node != "" && !strings.Contains(node, "/") {
		return Proxy{ID: id, Kind: Ztunnel, Node: node}, nil
	}
	if len(s.waypointsOf(id)) > 0 {
		return Proxy{ID: id, Kind: Waypoint}, nil
	}
	return Proxy{}, fmt.Errorf("%w: %s is neither a ztunnel (%s%s<node>) nor a workload the mesh state names as a waypoint",
		ErrNotProxy, id, s.cfg.TrustDomain.IDString(), wire.ZtunnelPathPrefix)
}

// Bundles names the policy bundles p reads (ztunnel/state/xds's bundle
// resource names, which are the bundle server's paths): a ztunnel the
// mesh-wide bundle; a waypoint the bundle of each waypoint Gateway
// whose workload has its identity, in the current state. The bundle
// server serves a proxy these and no others, and the stream tells it
// their revisions.
func (s *Server) Bundles(p Proxy) []string {
	switch p.Kind {
	case Ztunnel:
		return []string{wire.MeshBundle}
	case Waypoint:
		var out []string
		for _, ref := range s.waypointsOf(p.ID) {
			out = append(out, wire.WaypointBundle(ref))
		}
		return out
	}
	return nil
}

func peerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("xds: no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("xds: the proxy presented no certificate: connect with mutual TLS and an SVID")
	}
	return x509svid.IDFromCert(info.State.PeerCertificates[0])
}

// checkNode refuses a ztunnel that asks for another node than the one its
// SVID names: a ztunnel authenticated as node A never subscribes for B.
func (p Proxy) checkNode(node *corev3.Node) error {
	if p.Kind != Ztunnel || node == nil {
		return nil
	}
	claimed := node.GetMetadata().GetFields()[wire.NodeMetadata].GetStringValue()
	if claimed == "" {
		claimed = node.GetId()
	}
	if claimed != "" && claimed != p.Node {
		return status.Errorf(codes.PermissionDenied, "xds: %s may subscribe for node %q only, not %q", p.ID, p.Node, claimed)
	}
	return nil
}
