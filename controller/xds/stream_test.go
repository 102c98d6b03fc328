package xds_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
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
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// sameState fails unless got holds exactly the workloads and services of
// want.
func sameState(t *testing.T, got *state.Snapshot, want *state.Snapshot) {
	t.Helper()
	if got == nil {
		t.Fatal("no state applied")
	}
	index := func(s *state.Snapshot) (map[string]state.Workload, map[string]state.Service) {
		ws, svcs := map[string]state.Workload{}, map[string]state.Service{}
		for _, w := range s.Workloads {
			ws[w.UID] = *w
		}
		for _, svc := range s.Services {
			svcs[wire.ServiceName(svc)] = *svc
		}
		return ws, svcs
	}
	gw, gs := index(got)
	ww, ws := index(want)
	if !reflect.DeepEqual(gw, ww) {
		t.Errorf("workloads:\n got %+v\nwant %+v", gw, ww)
	}
	if !reflect.DeepEqual(gs, ws) {
		t.Errorf("services:\n got %+v\nwant %+v", gs, ws)
	}
}

func TestDeltas(t *testing.T) {
	ca := testpki.New(t, "td.test")
	// One node: the ztunnel's scope is the whole state (what another
	// node's ztunnel is sent is TestNodeScope's).
	ws, svcs := mesh(t, 20, 1, 3)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	p := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	st := b.waitAcked(t, p)
	got, _ := p.state()
	sameState(t, got, snapshot(t, ws, svcs))
	// The first response was node-0's twenty workloads alone; the second
	// the three services selecting them.
	if st.LastPush.Resources != 3 || st.Streams != 1 || st.Kind != xds.Ztunnel || st.Node != "node-0" {
		t.Errorf("status after the initial sync: %+v, want the second push of 3 resources", st)
	}
	full := st.TotalBytes

	changed := *ws[5]
	changed.Labels = map[string]string{"pod": "5", "app": "app-2", "version": "v2"}
	ws[5] = &changed
	withAdded := append(ws[:len(ws):len(ws)], workload(20, 1, 3))
	tests := []struct {
		name               string
		workloads          []*state.Workload
		resources, removed int
	}{
		{name: "update", workloads: ws, resources: 1},
		{name: "add", workloads: withAdded, resources: 1},
		{name: "remove", workloads: withAdded[1:], removed: 1},
		{name: "no change", workloads: withAdded[1:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := b.srv.Proxy(p.id.String())
			want := snapshot(t, tt.workloads, svcs)
			b.srv.Update(want)
			st := b.waitAcked(t, p)
			got, _ := p.state()
			sameState(t, got, want)
			push := st.LastPush
			if tt.resources == 0 && tt.removed == 0 {
				push = xds.Push{}
				if st.TotalBytes != before.TotalBytes {
					t.Errorf("an unchanged state sent %d bytes", st.TotalBytes-before.TotalBytes)
				}
			}
			if push.Resources != tt.resources || push.Removed != tt.removed {
				t.Errorf("push: %+v, want %d resources and %d removed", push, tt.resources, tt.removed)
			}
			if tt.resources+tt.removed > 0 && push.Bytes*5 > int(full) {
				t.Errorf("one change sent %d bytes; the full state is %d", push.Bytes, full)
			}
		})
	}
}

func TestNACK(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 4, 1, 1)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	p := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	good := b.waitAcked(t, p)
	_, applies := p.state()

	bad := *ws[2]
	bad.IPs = []netip.Addr{netip.MustParseAddr("127.0.0.9")}
	b.srv.Update(snapshot(t, []*state.Workload{ws[0], ws[1], &bad, ws[3]}, svcs))
	st := waitFor(t, func() (xds.ProxyStatus, bool) {
		st, _ := b.srv.Proxy(p.id.String())
		return st, st.LastNACK != nil
	}, "a NACK")
	if st.LastNACK.Version != b.srv.Version() || !strings.Contains(st.LastNACK.Reason, "uid-00002") || !strings.Contains(st.LastNACK.Reason, "127.0.0.9") {
		t.Errorf("NACK %+v: want version %s, naming the resource and its address", st.LastNACK, b.srv.Version())
	}
	if st.AckedVersion != good.AckedVersion || p.client.Version() != good.AckedVersion {
		t.Errorf("acked %s, client at %s: want the last good version %s kept", st.AckedVersion, p.client.Version(), good.AckedVersion)
	}
	if _, n := p.state(); n != applies {
		t.Errorf("a refused state was applied")
	}

	// The next good state is sent and ACKed; the NACK stays on record. The
	// proxy still holds the good uid-00002, so only uid-00003's removal
	// goes out.
	b.srv.Update(snapshot(t, ws[:3], svcs))
	st = b.waitAcked(t, p)
	got, _ := p.state()
	sameState(t, got, snapshot(t, ws[:3], svcs))
	if st.LastNACK == nil || st.LastPush.Resources != 0 || st.LastPush.Removed != 1 {
		t.Errorf("status after recovery: %+v; want the NACK kept, and a push of uid-00003's removal alone", st)
	}
}

// TestNodeIdentity: a ztunnel's node is its SVID's; it cannot subscribe
// for another node, and only ztunnels and waypoints subscribe at all.
func TestNodeIdentity(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 2, 2, 0)
	ws[1].Waypoint = "shop/pod-0" // pod-0 (shop/default) is a waypoint
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	other := testpki.New(t, "other.test")
	tests := []struct {
		name string
		ca   *testpki.CA
		path string
		node string
		want codes.Code
	}{
		{name: "own node", ca: ca, path: "/regomesh/ztunnel/node-0", node: "node-0", want: codes.OK},
		{name: "another node", ca: ca, path: "/regomesh/ztunnel/node-0", node: "node-1", want: codes.PermissionDenied},
		{name: "no node claimed", ca: ca, path: "/regomesh/ztunnel/node-1", want: codes.OK},
		{name: "waypoint", ca: ca, path: "/ns/shop/sa/default", want: codes.OK},
		{name: "workload", ca: ca, path: "/ns/shop/sa/web", want: codes.PermissionDenied},
		{name: "ztunnel of another trust domain", ca: other, path: "/regomesh/ztunnel/node-0", node: "node-0", want: codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := subscribeOnce(t, b, tt.ca, tt.path, tt.node)
			if got := status.Code(err); got != tt.want {
				t.Errorf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	// The refused client never got a workload, and the server holds no
	// status for it.
	if _, ok := b.srv.Proxy(spiffeid.RequireFromPath(ca.TD, "/ns/shop/sa/web").String()); ok {
		t.Error("a refused subscriber has a status")
	}
}

// subscribeOnce opens a raw stream with an SVID for path from ca, sends
// the first request for node and reads the first response.
func subscribeOnce(t *testing.T, b *bed, ca *testpki.CA, path, node string) (*discoveryv3.DeltaDiscoveryResponse, error) {
	t.Helper()
	bundle := ca.Bundle()
	if ca != b.ca {
		bundle = b.ca.Bundle() // trust the controller, present a foreign SVID
	}
	tlsConfig := tlsconfig.MTLSClientConfig(ca.SVID(t, path), bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(b.ca.TD, controllerPath)))
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: wire.TypeURL, Node: &corev3.Node{}}
	if node != "" {
		req.Node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{wire.NodeMetadata: structpb.NewStringValue(node)}}
	}
	if err := s.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return s.Recv() // after an io.EOF from Send too: Recv has the stream's status
}

// TestRestart: the client keeps its state while the controller is away,
// and on reconnect is sent only what changed meanwhile, removals included.
func TestRestart(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 10, 1, 2)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	p := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	b.waitAcked(t, p)
	before, applies := p.state()

	b.stop()
	changed := *ws[3]
	changed.Labels = map[string]string{"pod": "3", "app": "app-0", "moved": "yes"}
	next := append([]*state.Workload{}, ws[1:]...)
	next[2] = &changed
	next = append(next, workload(10, 1, 2))
	want := snapshot(t, next, svcs)
	if got, n := p.state(); got != before || n != applies {
		t.Fatal("the state changed while the controller was away")
	}

	b2 := newBed(t, ca, b.addr, want)
	st := b2.waitAcked(t, p)
	got, _ := p.state()
	sameState(t, got, want)
	if st.LastPush.Resources != 2 || st.LastPush.Removed != 1 {
		t.Errorf("resync: %+v; want 2 resources (changed, added) and 1 removed, not the whole state", st.LastPush)
	}

	// A restart that changed nothing applies nothing: the proxy's state,
	// and the connections checked against it, stay as they are.
	_, applies = p.state()
	b2.stop()
	b3 := newBed(t, ca, b.addr, want)
	st = b3.waitAcked(t, p)
	if _, n := p.state(); n != applies || st.LastPush.Resources+st.LastPush.Removed != 0 {
		t.Errorf("an unchanged resync applied %d states and pushed %+v", n-applies, st.LastPush)
	}
}

// TestRestartWaitsForState: a controller that restarts answers no stream
// before its first state, so a proxy reconnecting meanwhile keeps what it
// holds (an empty answer would remove every workload, and close every
// connection checked against them), and then applies the new state once.
func TestRestartWaitsForState(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 10, 1, 2)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	p := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	b.waitAcked(t, p)
	before, applies := p.state()
	b.stop()

	b2 := newBed(t, ca, b.addr, nil)
	waitFor(t, func() (int, bool) { n := b2.srv.Report().Waiting; return n, n == 1 }, "the reconnected stream to wait for the first state")
	if got, n := p.state(); got != before || n != applies {
		t.Fatalf("the proxy applied %d states from a controller with none", n-applies)
	}
	want := snapshot(t, ws[1:], svcs)
	b2.srv.Update(want)
	b2.waitAcked(t, p)
	got, n := p.state()
	sameState(t, got, want)
	if n != applies+1 {
		t.Errorf("the resync applied %d states, want 1", n-applies)
	}
	if w := b2.srv.Report().Waiting; w != 0 {
		t.Errorf("%d streams still wait after the first state", w)
	}
}

// TestOwnNodeFirst: a ztunnel that holds nothing is sent its own node's
// workloads alone first, without a system version (it holds no whole
// version until the rest arrives); a waypoint is sent everything at once.
func TestOwnNodeFirst(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 9, 3, 2)
	ws[0].Waypoint = "shop/pod-1" // pod-1 (shop/default) is a waypoint
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	tests := []struct {
		name, path, node string
		want             []string
		version          string
	}{
		{name: "ztunnel", path: "/regomesh/ztunnel/node-2", node: "node-2", want: []string{"uid-00002", "uid-00005", "uid-00008"}},
		{name: "waypoint", path: "/ns/shop/sa/default", version: "1", want: []string{
			"shop/svc-0.shop.svc.cluster.local", "shop/svc-1.shop.svc.cluster.local",
			"uid-00000", "uid-00001", "uid-00002", "uid-00003", "uid-00004", "uid-00005", "uid-00006", "uid-00007", "uid-00008",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := subscribeOnce(t, b, ca, tt.path, tt.node)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range resp.GetResources() {
				got = append(got, r.GetName())
			}
			if !reflect.DeepEqual(got, tt.want) || resp.GetSystemVersionInfo() != tt.version {
				t.Errorf("first response %v at version %q, want %v at %q", got, resp.GetSystemVersionInfo(), tt.want, tt.version)
			}
		})
	}
}

// TestStartWithoutState: a proxy whose controller never sends a state
// says so, not that its stream failed.
func TestStartWithoutState(t *testing.T) {
	ca := testpki.New(t, "td.test")
	b := newBed(t, ca, "127.0.0.1:0", nil)
	c, err := wire.NewClient(wire.ClientConfig{
		Addr: b.addr, SVID: ca.SVID(t, "/regomesh/ztunnel/node-0"), Bundle: ca.Bundle(), Controller: spiffeid.RequireFromPath(ca.TD, controllerPath),
		Node: "node-0", TrustDomain: ca.TD.Name(), Logger: quiet(), Apply: func(*state.Snapshot) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		_, err := c.Start(context.Background(), 5*time.Second)
		started <- err
	}()
	waitFor(t, func() (int, bool) { n := b.srv.Report().Waiting; return n, n == 1 }, "the stream to wait for the first state")
	if err = <-started; err == nil || !strings.Contains(err.Error(), "has not sent its first state yet") || strings.Contains(err.Error(), "last error") {
		t.Fatalf("Start = %v; want it to say the controller has sent no state", err)
	}
}
