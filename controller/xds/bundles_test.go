package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testpki"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

func (p *proxy) bundleRevisions() (map[string]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.bundles), p.bundleCalls
}

// waitBundles waits until the proxy's client holds want, has ACKed it,
// and the server has recorded the ACK.
func (b *bed) waitBundles(t *testing.T, p *proxy, want map[string]string) {
	t.Helper()
	waitFor(t, func() (string, bool) {
		got, _ := p.bundleRevisions()
		st, _ := b.srv.Proxy(p.id.String())
		return fmt.Sprintf("client %v, acked %v", got, st.Bundles),
			maps.Equal(got, want) && maps.Equal(p.client.Bundles(), want) && maps.Equal(st.Bundles, want)
	}, "bundle revisions %v", want)
}

// TestBundleRevisions: the stream tells each proxy the revision of the
// bundles it reads, and only those: a ztunnel the mesh-wide bundle's, a
// waypoint its own Gateway's; a change is sent as it happens, a bundle
// gone as a removal, and a proxy is told nothing of another's.
func TestBundleRevisions(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 4, 2, 1)
	// pod-0 (shop/default) is the waypoint shop/pod-0, used by pod-1;
	// pod-2 runs as shop/other and is waypoint shop/pod-2, used by pod-3.
	ws[1].Waypoint = "shop/pod-0"
	ws[2].ServiceAccount = "other"
	ws[3].Waypoint = "shop/pod-2"
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	b.srv.UpdateBundles(map[string]string{
		wire.MeshBundle:                   "m1",
		wire.WaypointBundle("shop/pod-0"): "a1",
		wire.WaypointBundle("shop/pod-2"): "b1",
	})
	zt := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	wpA := b.connect(t, "/ns/shop/sa/default", "")
	wpB := b.connect(t, "/ns/shop/sa/other", "")
	b.waitBundles(t, zt, map[string]string{wire.MeshBundle: "m1"})
	b.waitBundles(t, wpA, map[string]string{wire.WaypointBundle("shop/pod-0"): "a1"})
	b.waitBundles(t, wpB, map[string]string{wire.WaypointBundle("shop/pod-2"): "b1"})

	// A policy change: new revisions of the mesh's and waypoint A's
	// bundles; waypoint B's bundle is gone.
	_, calls := wpB.bundleRevisions()
	b.srv.UpdateBundles(map[string]string{wire.MeshBundle: "m2", wire.WaypointBundle("shop/pod-0"): "a2"})
	b.waitBundles(t, zt, map[string]string{wire.MeshBundle: "m2"})
	b.waitBundles(t, wpA, map[string]string{wire.WaypointBundle("shop/pod-0"): "a2"})
	b.waitBundles(t, wpB, map[string]string{})
	if _, n := wpB.bundleRevisions(); n != calls+1 {
		t.Errorf("waypoint B was told %d times of its bundle's removal, want once", n-calls)
	}
	// The state's own stream was not disturbed: every proxy holds its
	// version.
	for _, p := range []*proxy{zt, wpA, wpB} {
		b.waitAcked(t, p)
	}
}

// TestIdentifyBundles: the identity mapping the bundle server shares
// with the stream.
func TestIdentifyBundles(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 3, 1, 1)
	ws[1].Waypoint = "shop/pod-0"
	srv := xds.New(xds.Config{TrustDomain: ca.TD, Logger: quiet()})
	srv.Update(snapshot(t, ws, svcs))
	tests := []struct {
		name string
		id   string
		want []string // nil: refused
	}{
		{name: "ztunnel", id: "spiffe://td.test/regomesh/ztunnel/node-0", want: []string{wire.MeshBundle}},
		{name: "waypoint", id: "spiffe://td.test/ns/shop/sa/default", want: []string{wire.WaypointBundle("shop/pod-0")}},
		{name: "workload", id: "spiffe://td.test/ns/shop/sa/web"},
		{name: "nested ztunnel path", id: "spiffe://td.test/regomesh/ztunnel/a/b"},
		{name: "other trust domain", id: "spiffe://other.test/regomesh/ztunnel/node-0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(tt.id)
			p, err := srv.Identify(id)
			if tt.want == nil {
				if !errors.Is(err, xds.ErrNotProxy) {
					t.Fatalf("Identify(%s) = %+v, %v; want ErrNotProxy", id, p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := srv.Bundles(p); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Bundles(%+v) = %v, want %v", p, got, tt.want)
			}
		})
	}
}

// TestBundleSubscriptionNode: every request that names a node is
// checked against the SVID, the bundle type's as the state's.
func TestBundleSubscriptionNode(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 2, 2, 0)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	b.srv.UpdateBundles(map[string]string{wire.MeshBundle: "m1"})
	tlsConfig := tlsconfig.MTLSClientConfig(ca.SVID(t, "/regomesh/ztunnel/node-0"), ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(ca.TD, controllerPath)))
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := func(n string) *corev3.Node {
		return &corev3.Node{Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{wire.NodeMetadata: structpb.NewStringValue(n)}}}
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: wire.BundleTypeURL, Node: node("node-0")}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != wire.MeshBundle || resp.GetResources()[0].GetVersion() != "m1" {
		t.Fatalf("first bundle response %v; want %s at m1", resp.GetResources(), wire.MeshBundle)
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: wire.TypeURL, Node: node("node-1")}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a request naming another node ended the stream with %v; want PermissionDenied", err)
		}
		return
	}
}

// TestBundleRevisionsResync: a reconnecting client names the revisions it
// holds; a controller with the same ones tells it nothing new, one with
// another tells it that.
func TestBundleRevisionsResync(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 2, 1, 1)
	snap := snapshot(t, ws, svcs)
	b := newBed(t, ca, "127.0.0.1:0", snap)
	b.srv.UpdateBundles(map[string]string{wire.MeshBundle: "m1"})
	p := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	b.waitBundles(t, p, map[string]string{wire.MeshBundle: "m1"})
	_, calls := p.bundleRevisions()
	b.stop()

	same := newBed(t, ca, b.addr, snap)
	same.srv.UpdateBundles(map[string]string{wire.MeshBundle: "m1"})
	same.waitBundles(t, p, map[string]string{wire.MeshBundle: "m1"})
	same.waitAcked(t, p)
	if _, n := p.bundleRevisions(); n != calls {
		t.Errorf("an unchanged resync handed the revisions on %d more times", n-calls)
	}
	same.stop()

	next := newBed(t, ca, b.addr, snap)
	next.srv.UpdateBundles(map[string]string{wire.MeshBundle: "m2"})
	next.waitBundles(t, p, map[string]string{wire.MeshBundle: "m2"})
}
