package ztunnel

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestOnDemand: a ztunnel whose state is its node's scope, streamed from
// the controller's server (controller/xds, mutual TLS with SVIDs), reaches
// a service whose only endpoint runs on another node: the connection
// subscribes to the VIP, waits for the answer, and is tunnelled to the
// endpoint it brought; an address outside the mesh still passes through.
func TestOnDemand(t *testing.T) {
	m := newPathMesh(t)
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The cluster as the controller sees it: api-1 on node-b, the rest on
	// node-a, this ztunnel's node.
	var ws []*state.Workload
	for _, w := range m.snap.Workloads {
		c := *w
		c.Node = "node-a"
		if c.Name == "api-1" {
			c.Node = "node-b"
		}
		ws = append(ws, &c)
	}
	cluster, err := state.NewSnapshot(ws, m.snap.Services)
	if err != nil {
		t.Fatal(err)
	}
	srv := xds.New(xds.Config{TrustDomain: m.ca.TD, Logger: discard})
	srv.Update(cluster)
	const controllerPath = "/ns/regomesh-system/sa/regomesh-controller"
	gs := xds.NewGRPCServer(srv, m.ca.SVID(t, controllerPath), m.bundle)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testgo.Go(t, func(ctx context.Context) {
		context.AfterFunc(ctx, gs.Stop)
		gs.Serve(l)
		srv.Wait()
	})
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: l.Addr().String(), SVID: m.ca.SVID(t, "/regomesh/ztunnel/node-a"), Bundle: m.bundle,
		Controller: spiffeid.RequireFromPath(m.ca.TD, controllerPath), Node: "node-a", TrustDomain: "cluster.local", Logger: discard,
		Apply: func(s *state.Snapshot) { m.z.SetState(context.Background(), s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	testgo.Go(t, func(ctx context.Context) { client.Run(ctx) })
	select {
	case <-client.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no state from the controller")
	}
	m.z.DemandFrom(client)
	if _, ok := m.z.State().Workload("shop", "api-1"); ok {
		t.Fatal("node-a's ztunnel holds node-b's api-1 before any connection needs it")
	}

	c := m.dial(t, "client", "10.96.0.2:80")
	if got, err := roundTrip(c, "hello"); err != nil || got != "hheelllloo" {
		t.Fatalf("round trip to the service: %q, %v", got, err)
	}
	if _, ok := m.z.State().Workload("shop", "api-1"); !ok {
		t.Error("after the connection, the state lacks the service's endpoint api-1")
	}
	c = m.dial(t, "client", outside)
	if got, err := roundTrip(c, "hello"); err != nil || got != "hheelllloo" {
		t.Fatalf("round trip to an address outside the mesh: %q, %v", got, err)
	}
	// The address outside the mesh stays subscribed once answered: what
	// appears there later is sent unasked, and taken away when it goes.
	id := spiffeid.RequireFromPath(m.ca.TD, "/regomesh/ztunnel/node-a").String()
	testgo.Eventually(t, "node-a's subscriptions to be the service's VIP and the outside address", func() bool {
		st, _ := srv.Proxy(id)
		return st.Subscribed == 2
	})
	outsideIP := netip.MustParseAddrPort(outside).Addr()
	late, err := state.NewSnapshot(append(slices.Clone(cluster.Workloads), &state.Workload{
		UID: "shop/late", Name: "late", Namespace: "shop", ServiceAccount: "late", TrustDomain: "cluster.local", Node: "node-b",
		IPs: []netip.Addr{outsideIP}, Protocol: state.HBONE,
	}), cluster.Services)
	if err != nil {
		t.Fatal(err)
	}
	srv.Update(late)
	testgo.Eventually(t, "the workload that appeared at the outside address to reach node-a", func() bool {
		_, ok := m.z.State().Workload("shop", "late")
		return ok
	})
	srv.Update(cluster)
	testgo.Eventually(t, "the workload gone from the outside address to leave node-a", func() bool {
		_, ok := m.z.State().Workload("shop", "late")
		return !ok
	})
	c = m.dial(t, "client", outside)
	if got, err := roundTrip(c, "again"); err != nil || got != "aaggaaiinn" {
		t.Fatalf("round trip outside the mesh, answered before: %q, %v", got, err)
	}
}
