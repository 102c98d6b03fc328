package xds_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// held lists the resource names of a state: workload UIDs and service
// names, sorted.
func held(s *state.Snapshot) []string {
	var out []string
	for _, w := range s.Workloads {
		out = append(out, wire.WorkloadName(w))
	}
	for _, svc := range s.Services {
		out = append(out, wire.ServiceName(svc))
	}
	slices.Sort(out)
	return out
}

// waitHeld waits until the proxy has ACKed the server's current version,
// and returns what its state holds.
func (b *bed) waitHeld(t *testing.T, p *proxy) ([]string, xds.ProxyStatus) {
	t.Helper()
	st := b.waitAcked(t, p)
	s, _ := p.state()
	return held(s), st
}

func demand(t *testing.T, p *proxy, ip netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.client.Demand(ctx, ip); err != nil {
		t.Fatalf("demand %s: %v", ip, err)
	}
}

func sameNames(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: holds %v, want %v", what, got, want)
	}
}

// TestNodeScope: a ztunnel is sent its node's workloads, their services
// and waypoints, and what it subscribes to on demand; never another
// node's workloads besides.
func TestNodeScope(t *testing.T) {
	ca := testpki.New(t, "td.test")
	// Pods 0-7, node i%2, app i%2: node-0 runs app-0 (svc-0), node-1 app-1
	// (svc-1). Pod 0's waypoint is pod 3, on node-1.
	ws, svcs := mesh(t, 8, 2, 2)
	ws[0].Waypoint = "shop/pod-3"
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	a := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	other := b.connect(t, "/regomesh/ztunnel/node-1", "node-1")
	got, _ := b.waitHeld(t, a)
	const svc0, svc1 = "shop/svc-0.shop.svc.cluster.local", "shop/svc-1.shop.svc.cluster.local"
	// uid-00003 comes as pod-0's waypoint, with its service (not that
	// service's other endpoints).
	sameNames(t, "node-0 at start", got, "uid-00000", "uid-00002", "uid-00004", "uid-00006", svc0, "uid-00003", svc1)
	got, _ = b.waitHeld(t, other)
	sameNames(t, "node-1 at start", got, "uid-00001", "uid-00003", "uid-00005", "uid-00007", svc1)

	// A new pod on node-1 goes to node-1's ztunnel, not node-0's: node-0's
	// next push, a change of its own pod, carries that change alone.
	ws = append(ws, workload(9, 2, 2))
	b.srv.Update(snapshot(t, ws, svcs))
	got, _ = b.waitHeld(t, other)
	if !slices.Contains(got, "uid-00009") {
		t.Errorf("node-1 holds %v, not its new pod uid-00009", got)
	}
	relabeled := *ws[2]
	relabeled.Labels = map[string]string{"pod": "2", "app": "app-0", "rev": "2"}
	ws[2] = &relabeled
	b.srv.Update(snapshot(t, ws, svcs))
	got, st := b.waitHeld(t, a)
	sameNames(t, "node-0 after node-1's new pod", got, "uid-00000", "uid-00002", "uid-00004", "uid-00006", svc0, "uid-00003", svc1)
	if st.LastPush.Resources != 1 || st.LastPush.Removed != 0 {
		t.Errorf("node-0's push after its own pod's change: %+v, want that one resource", st.LastPush)
	}

	// On demand: a workload's address brings it (and its services, not
	// their endpoints); a service's VIP brings its endpoints; an address
	// outside the mesh brings nothing, and stays subscribed.
	demand(t, a, ws[5].IPs[0])
	got, _ = b.waitHeld(t, a)
	sameNames(t, "node-0 after demanding pod-5", got, "uid-00000", "uid-00002", "uid-00004", "uid-00006", svc0, "uid-00003", svc1, "uid-00005")
	demand(t, a, svcs[1].VIPs[0])
	got, _ = b.waitHeld(t, a)
	sameNames(t, "node-0 after demanding svc-1", got, "uid-00000", "uid-00002", "uid-00004", "uid-00006", svc0,
		"uid-00001", "uid-00003", "uid-00005", "uid-00007", "uid-00009", svc1)
	waitFor(t, func() (int, bool) {
		st, _ := b.srv.Proxy(a.id.String())
		return st.Subscribed, st.Subscribed == 2
	}, "node-0 to hold two subscriptions")
	before, applies := a.state()
	demand(t, a, netip.MustParseAddr("192.0.2.1"))
	waitFor(t, func() (int, bool) {
		st, _ := b.srv.Proxy(a.id.String())
		return st.Subscribed, st.Subscribed == 3
	}, "node-0 to keep the subscription to an address outside the mesh")
	if s, n := a.state(); s != before || n != applies {
		t.Error("an address outside the mesh changed node-0's state")
	}

	// What it subscribed to stays current: a new endpoint of svc-1 on
	// node-1 reaches node-0; a deleted one leaves it.
	ws = append(ws, workload(11, 2, 2))
	b.srv.Update(snapshot(t, ws, svcs))
	got, _ = b.waitHeld(t, a)
	if !slices.Contains(got, "uid-00011") {
		t.Errorf("node-0 holds %v, not svc-1's new endpoint uid-00011", got)
	}
	ws = slices.DeleteFunc(ws, func(w *state.Workload) bool { return w.UID == "uid-00009" })
	b.srv.Update(snapshot(t, ws, svcs))
	got, _ = b.waitHeld(t, a)
	if slices.Contains(got, "uid-00009") {
		t.Errorf("node-0 still holds the deleted uid-00009: %v", got)
	}
}

// TestNodeScopeReconnect: a ztunnel that held another node's workloads
// (from a controller that sent everything, or a subscription it no longer
// makes) is told to drop them when it reconnects; what it demanded is
// subscribed to again.
func TestNodeScopeReconnect(t *testing.T) {
	ca := testpki.New(t, "td.test")
	ws, svcs := mesh(t, 8, 2, 2)
	b := newBed(t, ca, "127.0.0.1:0", snapshot(t, ws, svcs))
	a := b.connect(t, "/regomesh/ztunnel/node-0", "node-0")
	b.waitAcked(t, a)
	demand(t, a, ws[1].IPs[0])
	got, _ := b.waitHeld(t, a)
	if !slices.Contains(got, "uid-00001") {
		t.Fatalf("node-0 holds %v, not the demanded uid-00001", got)
	}
	b.stop()
	b2 := newBed(t, ca, b.addr, snapshot(t, ws, svcs))
	got, st := b2.waitHeld(t, a)
	const svc0, svc1 = "shop/svc-0.shop.svc.cluster.local", "shop/svc-1.shop.svc.cluster.local"
	sameNames(t, "node-0 after the controller's restart", got, "uid-00000", "uid-00002", "uid-00004", "uid-00006", svc0, "uid-00001", svc1)
	if st.Subscribed != 1 || st.LastPush.Removed != 0 {
		t.Errorf("after the restart: %+v; want the subscription made again, and nothing removed", st)
	}
}
