package xds_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestDemandFoundThenDeleted: node-a's ztunnel, streaming from the
// controller's server, demands the addresses of MaxDemandMisses+extra
// pods on node-b, and holds them all. The pods are deleted: the
// controller removes them by UID, and each address becomes a miss, so
// the extra that became misses first are unsubscribed, on both sides,
// and the subscriptions are bounded although every address was found
// once. A kept miss still brings what appears there; an evicted one is
// asked for again, and pushes out the next oldest.
func TestDemandFoundThenDeleted(t *testing.T) {
	const extra = 8
	n := wire.MaxDemandMisses + extra
	ca := testpki.New(t, "td.test")
	own := pod(0, "node-a")
	ws := []*state.Workload{own}
	var keys []string
	var ips []netip.Addr
	for i := 1; i <= n; i++ {
		w := pod(i, "node-b")
		ws = append(ws, w)
		ips = append(ips, w.IPs[0])
		keys = append(keys, wire.AddressKey(w.IPs[0]))
	}
	slices.Sort(keys) // the order in which one response's removals become misses
	srv, addr := serve(t, ca, stateOf(t, ws...))
	client, applied := connect(t, ca, addr, "node-a")
	id := spiffeid.RequireFromPath(ca.TD, "/regomesh/ztunnel/node-a").String()
	subscribed := func(want int) {
		t.Helper()
		testgo.Eventually(t, fmt.Sprintf("the controller to hold %d subscriptions of node-a", want), func() bool {
			st, _ := srv.Proxy(id)
			return st.Subscribed == want
		})
	}

	demandAll(t, client, ips)
	found, misses := client.Demanded()
	if len(found) != n || len(misses) != 0 {
		t.Fatalf("after demanding %d pods: %d found, %d misses", n, len(found), len(misses))
	}
	subscribed(n)

	// node-b's pods are deleted.
	srv.Update(stateOf(t, own))
	subscribed(wire.MaxDemandMisses)
	found, misses = client.Demanded()
	if len(found) != 0 || !slices.Equal(misses, keys[extra:]) {
		t.Fatalf("after the pods' deletion: found %v; misses %d, want the %d newest of %d (all but %v)", found, len(misses), wire.MaxDemandMisses, n, keys[:extra])
	}
	if s := applied(); len(s.Workloads) != 1 {
		t.Errorf("node-a holds %d workloads after node-b's were deleted, want its own alone", len(s.Workloads))
	}

	// A pod that appears at a kept miss's address arrives unasked.
	kept := keys[extra+3]
	late := &state.Workload{
		UID: "uid-late", Name: "late", Namespace: "shop", ServiceAccount: "default", TrustDomain: "td.test",
		IPs: []netip.Addr{addrOf(kept)}, Node: "node-b", Protocol: state.HBONE,
	}
	srv.Update(stateOf(t, own, late))
	testgo.Eventually(t, "the pod that appeared at "+kept+" to reach node-a", func() bool {
		_, ok := applied().Workload("shop", "late")
		return ok
	})
	srv.Update(stateOf(t, own))
	testgo.Eventually(t, "the deleted pod at "+kept+" to leave node-a", func() bool {
		_, ok := applied().Workload("shop", "late")
		return !ok
	})
	subscribed(wire.MaxDemandMisses)

	// An evicted address is asked for again; it is a miss once more, the
	// newest, and the oldest kept one goes.
	demandAll(t, client, []netip.Addr{addrOf(keys[0])})
	subscribed(wire.MaxDemandMisses)
	want := append(slices.Clone(keys[extra+1:]), keys[0])
	slices.Sort(want)
	if _, misses = client.Demanded(); !slices.Equal(misses, want) {
		t.Errorf("after asking for %s again: misses %d, want %s in and %s out", keys[0], len(misses), keys[0], keys[extra])
	}
}

// addrOf is the address an address key names ("/<ip>").
func addrOf(key string) netip.Addr { return netip.MustParseAddr(strings.TrimPrefix(key, "/")) }

// pod is workload i on node, at 10.1.<i/256>.<i%256>.
func pod(i int, node string) *state.Workload {
	return &state.Workload{
		UID: fmt.Sprintf("uid-%05d", i), Name: fmt.Sprintf("pod-%d", i), Namespace: "shop", ServiceAccount: "default",
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}, Node: node,
		Protocol: state.HBONE, TrustDomain: "td.test",
	}
}

func stateOf(t *testing.T, ws ...*state.Workload) *state.Snapshot {
	t.Helper()
	s, err := state.NewSnapshot(ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const controllerPath = "/ns/regomesh-system/sa/regomesh-controller"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve runs the controller's state stream on a loopback port until the
// test ends, holding snap.
func serve(t *testing.T, ca *testpki.CA, snap *state.Snapshot) (*xds.Server, string) {
	t.Helper()
	srv := xds.New(xds.Config{TrustDomain: ca.TD, Logger: quiet()})
	srv.Update(snap)
	gs := xds.NewGRPCServer(srv, ca.SVID(t, controllerPath), ca.Bundle())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testgo.Go(t, func(ctx context.Context) {
		context.AfterFunc(ctx, gs.Stop)
		gs.Serve(l)
		srv.Wait()
	})
	return srv, l.Addr().String()
}

// connect runs node's ztunnel client until the test ends, and waits for
// its first state; applied is the state it last applied.
func connect(t *testing.T, ca *testpki.CA, addr, node string) (client *wire.Client, applied func() *state.Snapshot) {
	t.Helper()
	var mu sync.Mutex
	var last *state.Snapshot
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: addr, SVID: ca.SVID(t, "/regomesh/ztunnel/"+node), Bundle: ca.Bundle(),
		Controller: spiffeid.RequireFromPath(ca.TD, controllerPath), Node: node, TrustDomain: ca.TD.Name(), Logger: quiet(),
		Apply: func(s *state.Snapshot) {
			mu.Lock()
			defer mu.Unlock()
			last = s
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	testgo.Go(t, func(ctx context.Context) { client.Run(ctx) })
	select {
	case <-client.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("no state from the controller")
	}
	return client, func() *state.Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

// demandAll demands every address at once, as many connections would,
// and fails t unless each is answered.
func demandAll(t *testing.T, client *wire.Client, ips []netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make(chan error, len(ips))
	for _, ip := range ips {
		go func() { errs <- client.Demand(ctx, ip) }()
	}
	for range ips {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
