package xds

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// AddressKey names an address in a subscription, as Istio's ztunnel
// names one it needs on demand: "<network>/<ip>", with the network empty.
func AddressKey(ip netip.Addr) string { return "/" + ip.Unmap().String() }

// ErrDemandRefused: the response that answered a demand was refused, so
// the state holds nothing new for the address.
var ErrDemandRefused = errors.New("xds: the controller's answer to a subscription was refused")

// ErrTooManyDemands: MaxDemandsAwaiting addresses already await the
// controller's answer, so a connection to one more is refused rather
// than subscribed to.
var ErrTooManyDemands = errors.New("xds: too many addresses await the controller's answer")

// MaxDemandsAwaiting bounds the demands not answered yet. A demand whose
// Demand timed out stays subscribed, and is named again by every new
// stream, until the controller answers it: without a bound, a controller
// away for long while connections kept going to new addresses would be
// sent more names than it takes in one subscription (65,536), and refuse
// the node's every stream from then on.
const MaxDemandsAwaiting = 4096

// demand is one address subscribed to on demand.
//
// Invariant: done is closed once the address is answered; found says
// whether it stands for a workload or a service (resource, by name), err
// whether the answer was refused. A refused demand leaves Client.demands
// at once. One that stands for nothing (a miss: answered so, or found
// until the controller removed its resource) stays subscribed, with its
// element in Client.misses (miss), until MaxDemandMisses newer misses
// push it out; miss is nil while the demand is unanswered, refused or
// found. So the addresses subscribed to are those standing for something
// the controller sends, those awaiting their answer, and at most
// MaxDemandMisses misses.
type demand struct {
	done     chan struct{}
	found    bool
	resource string
	err      error
	miss     *list.Element
}

// MaxDemandMisses is how many addresses that stand for nothing (outside
// the mesh, or whose workload or service was deleted) a client keeps
// subscribed: a connection to one of them passes through at once,
// without asking the controller again, and a workload or service that
// appears there later is sent by the controller as to any subscription.
// Past it, the one that became a miss longest ago is unsubscribed, and
// asked for again at its next connection. The bound is the controller's
// too: it keeps each proxy's subscriptions and resolves them at every
// push.
const MaxDemandMisses = 1024

// Demand makes sure the state holds what a connection to ip needs. The
// controller sends a ztunnel its node's workloads, not the mesh
// (docs/state-stream.md): a destination it does not hold (or a service,
// whose endpoints on other nodes it holds only once subscribed to) is
// subscribed to by address, and Demand waits for the controller's
// answer, which the state then holds: the workload with its waypoint, or
// the service with its endpoints and waypoint. The subscription stays,
// so later changes to them arrive by themselves; so does one to an
// address that stands for nothing (outside the mesh), within
// MaxDemandMisses, so that later connections to it do not wait for the
// controller, and what appears there later arrives by itself. An
// address whose workload or service the controller removes (the pod was
// deleted) stands for nothing from then on, as if answered so: the
// addresses subscribed are bounded by what exists and MaxDemandMisses.
// While the stream is down, an address that stands for nothing is
// waited for as an unknown one is: what appeared there meanwhile would
// not have arrived.
//
// Demand returns at once for a workload's address the state holds, or an
// address already answered. It returns ctx's error if the answer does not
// come in time (the controller is away, or the proxy refuses its state),
// ErrDemandRefused if the answering response was refused, and
// ErrTooManyDemands, at once, for a new address while MaxDemandsAwaiting
// others await their answer. It is safe for concurrent use.
func (c *Client) Demand(ctx context.Context, ip netip.Addr) error {
	ip = ip.Unmap()
	key := AddressKey(ip)
	c.mu.Lock()
	if c.snap != nil {
		if _, ok := c.snap.WorkloadByIP(ip); ok {
			c.mu.Unlock()
			return nil
		}
	}
	d, ok := c.demands[key]
	if ok && d.settled() && !d.found && !c.live {
		// It stood for nothing, but nothing says it still does while the
		// stream is down: wait for the stream's first answer, which would
		// bring what appeared there, as for an address never asked for.
		wait := c.liveCh
		c.mu.Unlock()
		select {
		case <-wait:
			return c.Demand(ctx, ip)
		case <-ctx.Done():
			return c.noAnswer(ctx, ip)
		}
	}
	if !ok {
		if c.awaiting >= MaxDemandsAwaiting {
			c.mu.Unlock()
			return fmt.Errorf("%w (%d) for %s", ErrTooManyDemands, MaxDemandsAwaiting, ip)
		}
		d = &demand{done: make(chan struct{})}
		c.demands[key] = d
		c.awaiting++
		// Posted with the change, after an unsubscription of key that
		// came before it (Client.out). With the stream down, the next
		// one subscribes to every demand.
		c.post(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeURL, ResourceNamesSubscribe: []string{key}})
	}
	c.mu.Unlock()
	select {
	case <-d.done:
		return d.err
	case <-ctx.Done():
		return c.noAnswer(ctx, ip)
	}
}

// noAnswer is Demand's error when ctx ended before an answer for ip.
func (c *Client) noAnswer(ctx context.Context, ip netip.Addr) error {
	return fmt.Errorf("xds: no answer from the controller at %s for %s: %w", c.cfg.Addr, ip, ctx.Err())
}

// settled reports whether d has its answer.
func (d *demand) settled() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// answered settles the demands resp answers: the address keys among its
// resources' aliases (found) and its removed names (standing for
// nothing), or, if resp was refused (applyErr), all it names, which are
// dropped. A found address whose resource resp removes, or that resp
// names as standing for nothing, becomes a miss. The misses pushed out
// of MaxDemandMisses, and the refused demands, are unsubscribed.
//
// The controller removes a deleted workload or service by its resource
// name (a UID, "<namespace>/<hostname>"), not by the address keys it
// answered: an address key is among the removed names only as the
// answer to a subscription (a new one, or every one again when a stream
// starts), which is why a found demand keeps its resource's name.
func (c *Client) answered(resp *discoveryv3.DeltaDiscoveryResponse, applyErr error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var drop []string
	for _, r := range resp.GetResources() {
		for _, key := range r.GetAliases() {
			drop = append(drop, c.settle(key, r.GetName(), applyErr)...)
		}
	}
	for _, name := range resp.GetRemovedResources() {
		drop = append(drop, c.settle(name, "", applyErr)...)
	}
	if applyErr == nil {
		drop = append(drop, c.resourcesRemoved(resp.GetRemovedResources())...)
	}
	if len(drop) > 0 {
		// Posted with the changes: a Demand that makes one of drop again
		// posts its subscription after this.
		c.post(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeURL, ResourceNamesUnsubscribe: drop})
	}
}

// settle, called with c.mu held, answers the demand for key, if any:
// standing for the resource named resource, or for nothing if resource
// is "". It returns the keys to unsubscribe.
func (c *Client) settle(key, resource string, applyErr error) (drop []string) {
	d, ok := c.demands[key]
	if !ok {
		return nil
	}
	if !d.settled() {
		c.awaiting--
		if applyErr != nil {
			d.err = fmt.Errorf("%w: %w", ErrDemandRefused, applyErr)
			close(d.done) // after d.err: Demand reads it once done is closed
			delete(c.demands, key)
			return []string{key}
		}
		if resource != "" {
			c.setFound(d, resource)
		} else {
			drop = c.setMiss(key, d)
		}
		close(d.done) // after d's fields: Demand reads them once done is closed
		return drop
	}
	// Answered before: a resource sent again with its alias, what now
	// stands at an address that stood for nothing, or nothing now at a
	// found one (the answers to every subscription when a stream starts).
	// A refused response changed nothing.
	switch {
	case applyErr != nil:
	case resource != "":
		c.setFound(d, resource)
	case d.found:
		drop = c.setMiss(key, d)
	}
	return drop
}

// resourcesRemoved, called with c.mu held, makes a miss of every found
// demand whose resource is among removed, in the order of their keys;
// it returns the keys to unsubscribe.
func (c *Client) resourcesRemoved(removed []string) (drop []string) {
	if len(removed) == 0 {
		return nil
	}
	gone := make(map[string]bool, len(removed))
	for _, name := range removed {
		gone[name] = true
	}
	var keys []string
	for key, d := range c.demands {
		if d.found && gone[d.resource] {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	for _, key := range keys {
		drop = append(drop, c.setMiss(key, c.demands[key])...)
	}
	return drop
}

// setFound, called with c.mu held, makes d stand for resource; a miss
// leaves c.misses.
func (c *Client) setFound(d *demand, resource string) {
	d.found, d.resource = true, resource
	if d.miss != nil {
		c.misses.Remove(d.miss)
		d.miss = nil
	}
}

// setMiss, called with c.mu held, makes d, the demand for key, a miss:
// the newest in c.misses unless it is one already. When that makes more
// than MaxDemandMisses, the oldest leaves c.demands, and setMiss returns
// its key to unsubscribe.
func (c *Client) setMiss(key string, d *demand) (drop []string) {
	d.found, d.resource = false, ""
	if d.miss != nil {
		return nil
	}
	d.miss = c.misses.PushBack(key)
	if c.misses.Len() <= MaxDemandMisses {
		return nil
	}
	oldest := c.misses.Remove(c.misses.Front()).(string)
	delete(c.demands, oldest)
	return []string{oldest}
}
