package main

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"

	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// refuseState is a proxy of node that refuses the first state the
// controller at addr sends it, saying reason, as a ztunnel does with
// what it cannot read (an older one, say). The controller and our own
// ztunnel validate alike and never disagree, so only such a client
// makes a NACK against the real controller. It authenticates with
// source's SVID and returns once its NACK is sent; its stream ends with
// the test.
func refuseState(t *testing.T, ctx context.Context, addr string, source *workloadapi.X509Source, controllerID spiffeid.ID, node, reason string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(controllerID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	streamCtx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(streamCtx)
	if err != nil {
		t.Fatal(err)
	}
	n := &corev3.Node{Id: node, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{wire.NodeMetadata: structpb.NewStringValue(node)}}}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: wire.TypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("the refusing proxy's stream: %v", err)
		}
		if resp.GetTypeUrl() != wire.TypeURL {
			continue
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{
			TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(),
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: reason},
		}); err != nil {
			t.Fatal(err)
		}
		return
	}
}
