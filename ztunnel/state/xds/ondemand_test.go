package xds

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/regomesh/regomesh/internal/testgo"
)

// Addresses that stood for nothing stay subscribed and answered, up to
// MaxDemandMisses; past it the oldest is unsubscribed (and would be asked
// for again). One that later stands for something is no longer a miss to
// evict.
func TestDemandMissesBounded(t *testing.T) {
	c := &Client{demands: map[string]*demand{}, out: newOutbox()}
	miss := func(key string) {
		c.demands[key] = &demand{done: make(chan struct{})}
		c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{key}}, nil)
	}
	key := func(i int) string { return fmt.Sprintf("/192.0.2.%d", i) }
	miss(key(0))
	miss(key(1))
	// An address that stood for nothing now stands for a workload.
	c.answered(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "w", Aliases: []string{key(1)}}}}, nil)
	if !c.demands[key(1)].found {
		t.Fatal("a miss the controller later answered is not found")
	}
	for i := 2; i < MaxDemandMisses+2; i++ {
		miss(key(i))
	}
	// key(0) went first; key(1)'s turn came next, but it stands for
	// something now: it stays.
	if unsubscribed := unsubscriptions(c); len(unsubscribed) != 1 || unsubscribed[0] != key(0) {
		t.Fatalf("unsubscribed %v, want the oldest miss alone, %s", unsubscribed, key(0))
	}
	if _, ok := c.demands[key(0)]; ok {
		t.Error("the evicted miss is still a demand")
	}
	if d := c.demands[key(1)]; d == nil || !d.found {
		t.Errorf("the found address: %+v, want it kept", d)
	}
	if d, ok := c.demands[key(2)]; !ok || d.found {
		t.Errorf("a kept miss: %+v, %v", d, ok)
	}
	miss(key(MaxDemandMisses + 2))
	if unsubscribed := unsubscriptions(c); len(unsubscribed) != 2 || unsubscribed[1] != key(2) {
		t.Errorf("unsubscribed %v, want %s next", unsubscribed, key(2))
	}
}

// A found address whose resource the controller removes, by its name
// (a deleted pod's UID) or by answering the address again as standing
// for nothing, becomes a miss; one whose resource stays, or whose
// removal was refused, stays found.
func TestDemandFoundBecomesMiss(t *testing.T) {
	const x, y, z = "/192.0.2.1", "/192.0.2.2", "/192.0.2.3"
	removed := func(names ...string) *discoveryv3.DeltaDiscoveryResponse {
		return &discoveryv3.DeltaDiscoveryResponse{RemovedResources: names}
	}
	type step struct {
		resp *discoveryv3.DeltaDiscoveryResponse
		err  error
	}
	tests := []struct {
		name   string
		steps  []step
		misses []string
	}{
		{name: "its workload removed", steps: []step{{resp: removed("uid-x")}}, misses: []string{x}},
		{name: "its service removed, with both its addresses", steps: []step{{resp: removed("shop/svc")}}, misses: []string{y, z}},
		{name: "its address answered as standing for nothing", steps: []step{{resp: removed(x)}}, misses: []string{x}},
		{name: "another resource removed", steps: []step{{resp: removed("uid-other")}}},
		{name: "a refused response", steps: []step{{resp: removed("uid-x", y), err: errors.New("refused")}}},
		{
			// The pod at x replaced while the stream was down: the answer
			// to the subscription made again comes with the old pod's
			// removal.
			name: "another resource answering for its address, its own removed",
			steps: []step{{resp: &discoveryv3.DeltaDiscoveryResponse{
				Resources:        []*discoveryv3.Resource{{Name: "uid-new", Aliases: []string{x}}},
				RemovedResources: []string{"uid-x"},
			}}},
		},
		{
			name: "the resource answering for it now removed",
			steps: []step{
				{resp: &discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "uid-new", Aliases: []string{x}}}}},
				{resp: removed("uid-x")},
				{resp: removed("uid-new")},
			},
			misses: []string{x},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{demands: map[string]*demand{}, out: newOutbox()}
			for _, key := range []string{x, y, z} {
				c.demands[key] = &demand{done: make(chan struct{})}
			}
			c.answered(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{
				{Name: "uid-x", Aliases: []string{x}}, {Name: "shop/svc", Aliases: []string{y, z}},
			}}, nil)
			for _, s := range tt.steps {
				c.answered(s.resp, s.err)
			}
			found, misses := c.Demanded()
			want := slices.DeleteFunc([]string{x, y, z}, func(k string) bool { return slices.Contains(tt.misses, k) })
			if !slices.Equal(misses, tt.misses) || !slices.Equal(found, want) {
				t.Errorf("misses %v, found %v; want misses %v, found %v", misses, found, tt.misses, want)
			}
			if unsubscribed := unsubscriptions(c); len(unsubscribed) != 0 {
				t.Errorf("unsubscribed %v, want nothing: the misses are within MaxDemandMisses", unsubscribed)
			}
		})
	}
}

// A key that becomes a miss again (a miss, then found, then its resource
// removed) is the newest miss: the misses that came between go before
// it, and it goes once MaxDemandMisses newer ones have come.
func TestDemandMissAgainIsNewest(t *testing.T) {
	c := &Client{demands: map[string]*demand{}, out: newOutbox()}
	miss := func(key string) {
		c.demands[key] = &demand{done: make(chan struct{})}
		c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{key}}, nil)
	}
	key := func(i int) string { return fmt.Sprintf("/198.18.%d.%d", i>>8, i&255) }
	const again = "/192.0.2.1"
	miss(again)
	c.answered(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "uid-a", Aliases: []string{again}}}}, nil)
	for i := 1; i < MaxDemandMisses; i++ {
		miss(key(i))
	}
	// The pod is deleted: again is a miss, the newest of MaxDemandMisses.
	c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{"uid-a"}}, nil)
	if d := c.demands[again]; d == nil || d.found {
		t.Fatalf("the address whose pod was deleted: %+v, want a miss", d)
	}
	if unsubscribed := unsubscriptions(c); len(unsubscribed) != 0 {
		t.Fatalf("unsubscribed %v with %d misses", unsubscribed, MaxDemandMisses)
	}
	miss(key(MaxDemandMisses))
	if unsubscribed := unsubscriptions(c); !slices.Equal(unsubscribed, []string{key(1)}) {
		t.Fatalf("unsubscribed %v, want %s: %s became a miss again after it", unsubscribed, key(1), again)
	}
	for i := MaxDemandMisses + 1; i < 2*MaxDemandMisses-1; i++ {
		miss(key(i))
	}
	if unsubscribed := unsubscriptions(c); slices.Contains(unsubscribed, again) || len(unsubscribed) != MaxDemandMisses-1 {
		t.Fatalf("%d unsubscribed, %s among them: %v", len(unsubscribed), again, slices.Contains(unsubscribed, again))
	}
	miss(key(2*MaxDemandMisses - 1))
	if unsubscribed := unsubscriptions(c); unsubscribed[len(unsubscribed)-1] != again {
		t.Errorf("unsubscribed %s after the misses older than %s, want %s", unsubscribed[len(unsubscribed)-1], again, again)
	}
	if _, ok := c.demands[again]; ok {
		t.Error("the evicted miss is still a demand")
	}
	if _, misses := c.Demanded(); len(misses) != MaxDemandMisses {
		t.Errorf("%d misses kept, want %d", len(misses), MaxDemandMisses)
	}
}

// A miss pushed out of MaxDemandMisses and demanded again at once is
// unsubscribed, then subscribed, however the sends are timed: here the
// unsubscription's send is held up while the demand is made. The other
// way round, the controller would drop the new subscription, and the
// demand would wait until the stream restarted. (Sending after c.mu was
// released, answered's unsubscription went second.)
func TestDemandAfterEvictionSubscribesLast(t *testing.T) {
	c := &Client{demands: map[string]*demand{}, out: newOutbox()}
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }
	key := AddressKey(ip(0))
	miss := func(i int) {
		c.mu.Lock()
		c.demands[AddressKey(ip(i))] = &demand{done: make(chan struct{})}
		c.mu.Unlock()
		c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{AddressKey(ip(i))}}, nil)
	}
	for i := range MaxDemandMisses {
		miss(i)
	}
	// The wire: each request once its send returns, which for the
	// unsubscription is when the test releases it.
	var mu sync.Mutex
	var wire []string
	sending, release := make(chan struct{}), make(chan struct{})
	send := func(r *discoveryv3.DeltaDiscoveryRequest) error {
		if len(r.GetResourceNamesUnsubscribe()) > 0 {
			close(sending)
			select {
			case <-release:
			case <-t.Context().Done():
			}
		}
		mu.Lock()
		defer mu.Unlock()
		wire = append(wire, requestNames(r)...)
		return nil
	}
	testgo.Go(t, func(ctx context.Context) { c.sendPosted(ctx, c.out, send) })

	miss(MaxDemandMisses) // pushes out key
	select {
	case <-sending:
	case <-time.After(30 * time.Second):
		t.Fatal("the unsubscription of the oldest miss was not sent")
	}
	demanded := make(chan error, 1)
	testgo.Go(t, func(ctx context.Context) { demanded <- c.Demand(ctx, ip(0)) })
	testgo.Eventually(t, "the demand for "+key+" to be made, and its subscription posted", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.demands[key]
		return ok
	})
	close(release)
	testgo.Eventually(t, "both requests to be sent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(wire) == 2
	})
	if want := []string{"-" + key, "+" + key}; !slices.Equal(wire, want) {
		t.Fatalf("requests sent %q, want %q: the controller would drop the subscription", wire, want)
	}
	c.answered(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "uid-0", Aliases: []string{key}}}}, nil)
	select {
	case err := <-demanded:
		if err != nil {
			t.Fatalf("the demand made again: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demand made again was not answered")
	}
}

// requestNames are the names r subscribes to ("+name") and unsubscribes
// from ("-name").
func requestNames(r *discoveryv3.DeltaDiscoveryRequest) []string {
	var names []string
	for _, name := range r.GetResourceNamesSubscribe() {
		names = append(names, "+"+name)
	}
	for _, name := range r.GetResourceNamesUnsubscribe() {
		names = append(names, "-"+name)
	}
	return names
}

// unsubscriptions are the names c has posted to unsubscribe from, in
// order, while no sender takes them.
func unsubscriptions(c *Client) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for _, r := range c.out.queue {
		names = append(names, r.GetResourceNamesUnsubscribe()...)
	}
	return names
}

// A miss answers at once while the stream is live (its state would have
// brought what appeared there), and is waited for as an unknown address
// while it is down: a connection then fails closed when no answer comes.
func TestDemandMissWhileStreamDown(t *testing.T) {
	c := &Client{demands: map[string]*demand{}, liveCh: make(chan struct{}), cfg: ClientConfig{Addr: "controller:15012"}}
	ip := netip.MustParseAddr("192.0.2.7")
	d := &demand{done: make(chan struct{})}
	close(d.done)
	c.demands[AddressKey(ip)] = d
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := c.Demand(ctx, ip); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a miss with the stream down: %v, want to wait and time out", err)
	}
	// The stream comes up while a connection waits: it is answered.
	waited := make(chan error, 1)
	go func() { waited <- c.Demand(t.Context(), ip) }()
	time.Sleep(10 * time.Millisecond)
	c.setLive()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("once live: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting demand was not answered when the stream came up")
	}
	if err := c.Demand(t.Context(), ip); err != nil {
		t.Fatalf("a miss with the stream live: %v", err)
	}
}

// TestDemandsAwaitingBounded: demands the controller has not answered
// (their connections timed out, the controller away) are bounded: past
// MaxDemandsAwaiting a connection to a new address is refused at once,
// and an answer makes room again.
func TestDemandsAwaitingBounded(t *testing.T) {
	c := &Client{demands: map[string]*demand{}, liveCh: make(chan struct{})}
	gone, cancel := context.WithCancel(context.Background())
	cancel() // every wait times out at once: the controller is away
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }
	for i := range MaxDemandsAwaiting {
		if err := c.Demand(gone, addr(i)); !errors.Is(err, context.Canceled) {
			t.Fatalf("demand %d: %v, want the wait's end", i, err)
		}
	}
	if err := c.Demand(gone, addr(MaxDemandsAwaiting)); !errors.Is(err, ErrTooManyDemands) {
		t.Fatalf("one demand past the bound: %v, want ErrTooManyDemands", err)
	}
	if len(c.demands) != MaxDemandsAwaiting {
		t.Fatalf("%d demands kept, want %d", len(c.demands), MaxDemandsAwaiting)
	}
	// An address already awaiting its answer is waited for, not refused.
	if err := c.Demand(gone, addr(7)); !errors.Is(err, context.Canceled) {
		t.Errorf("a demand already made: %v, want the wait's end", err)
	}
	c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{AddressKey(addr(3))}}, nil)
	if err := c.Demand(gone, addr(MaxDemandsAwaiting)); !errors.Is(err, context.Canceled) {
		t.Errorf("after an answer: %v, want the demand made and waited for", err)
	}
}
