package xds

import (
	"fmt"
	"testing"

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
