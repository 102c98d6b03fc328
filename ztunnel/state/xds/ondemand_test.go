package xds

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Addresses that stood for nothing stay subscribed and answered, up to
// MaxDemandMisses; past it the oldest is unsubscribed (and would be asked
// for again). One that later stands for something is no longer a miss to
// evict.
func TestDemandMissesBounded(t *testing.T) {
	c := &Client{demands: map[string]*demand{}}
	var unsubscribed []string
	send := func(r *discoveryv3.DeltaDiscoveryRequest) error {
		unsubscribed = append(unsubscribed, r.GetResourceNamesUnsubscribe()...)
		return nil
	}
	miss := func(key string) {
		c.demands[key] = &demand{done: make(chan struct{})}
		c.answered(&discoveryv3.DeltaDiscoveryResponse{RemovedResources: []string{key}}, nil, send)
	}
	key := func(i int) string { return fmt.Sprintf("/192.0.2.%d", i) }
	miss(key(0))
	miss(key(1))
	// An address that stood for nothing now stands for a workload.
	c.answered(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{Name: "w", Aliases: []string{key(1)}}}}, nil, send)
	if !c.demands[key(1)].found {
		t.Fatal("a miss the controller later answered is not found")
	}
	for i := 2; i < MaxDemandMisses+2; i++ {
		miss(key(i))
	}
	// key(0) went first; key(1)'s turn came next, but it stands for
	// something now: it stays.
	if len(unsubscribed) != 1 || unsubscribed[0] != key(0) {
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
	if len(unsubscribed) != 2 || unsubscribed[1] != key(2) {
		t.Errorf("unsubscribed %v, want %s next", unsubscribed, key(2))
	}
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
