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
	if id.TrustDomain() != s.cfg.TrustDomain {
		return Proxy{}, status.Errorf(codes.PermissionDenied, "xds: %s is not in trust domain %s", id, s.cfg.TrustDomain)
	}
	if node, ok := strings.CutPrefix(id.Path(), wire.ZtunnelPathPrefix); ok && node != "" && !strings.Contains(node, "/") {
		return Proxy{ID: id, Kind: Ztunnel, Node: node}, nil
	}
	if s.isWaypoint(id) {
		return Proxy{ID: id, Kind: Waypoint}, nil
	}
	return Proxy{}, status.Errorf(codes.PermissionDenied,
		"xds: %s is neither a ztunnel (%s%s<node>) nor a workload the mesh state names as a waypoint", id, s.cfg.TrustDomain.IDString(), wire.ZtunnelPathPrefix)
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
