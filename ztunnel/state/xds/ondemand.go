package xds

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// AddressKey names an address in a subscription, as Istio's ztunnel
// names one it needs on demand: "<network>/<ip>", with the network empty.
func AddressKey(ip netip.Addr) string { return "/" + ip.Unmap().String() }

// ErrDemandRefused: the response that answered a demand was refused, so
// the state holds nothing new for the address.
var ErrDemandRefused = errors.New("xds: the controller's answer to a subscription was refused")

// demand is one address subscribed to on demand.
//
// Invariant: done is closed once the address is answered; found says
// whether it stood for a workload or a service, err whether the answer
// was refused. A refused demand leaves Client.demands at once; one that
// stood for nothing stays subscribed, in Client.misses too, until
// MaxDemandMisses newer ones push it out.
type demand struct {
	done  chan struct{}
	found bool
	err   error
}

// MaxDemandMisses is how many addresses that stood for nothing (outside
// the mesh) a client keeps subscribed: a connection to one of them passes
// through at once, without asking the controller again, and a workload
// or service that appears there later is sent by the controller as to
// any subscription. Past it, the oldest is unsubscribed, and asked for
// again at its next connection. The bound is the controller's too: it
// keeps each proxy's subscriptions and resolves them at every push.
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
// controller, and what appears there later arrives by itself. While the
// stream is down, such an address is waited for as an unknown one is:
// what appeared there meanwhile would not have arrived.
//
// Demand returns at once for a workload's address the state holds, or an
// address already answered. It returns ctx's error if the answer does not
// come in time (the controller is away, or the proxy refuses its state),
// and ErrDemandRefused if the answering response was refused. It is safe
// for concurrent use.
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
		d = &demand{done: make(chan struct{})}
		c.demands[key] = d
	}
	send := c.send
	c.mu.Unlock()
	if !ok && send != nil {
		// A stream that breaks here subscribes again with every demand.
		_ = send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeURL, ResourceNamesSubscribe: []string{key}})
	}
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
// nothing), or, if resp was refused (applyErr), all it names. Keys that
// stand for nothing are unsubscribed.
func (c *Client) answered(resp *discoveryv3.DeltaDiscoveryResponse, applyErr error, send func(*discoveryv3.DeltaDiscoveryRequest) error) {
	c.mu.Lock()
	var drop []string
	settle := func(key string, found bool) {
		d, ok := c.demands[key]
		if !ok {
			return
		}
		if d.settled() {
			// Answered before: a resource sent again with its alias, or
			// what now stands at an address that stood for nothing.
			d.found = d.found || (found && applyErr == nil)
			return
		}
		d.found = found && applyErr == nil
		if applyErr != nil {
			d.err = fmt.Errorf("%w: %w", ErrDemandRefused, applyErr)
		}
		close(d.done) // after d's fields: Demand reads them once done is closed
		switch {
		case applyErr != nil:
			delete(c.demands, key)
			drop = append(drop, key)
		case !found:
			c.misses = append(c.misses, key)
			if len(c.misses) > MaxDemandMisses {
				oldest := c.misses[0]
				c.misses = c.misses[1:]
				if o, ok := c.demands[oldest]; ok && !o.found {
					delete(c.demands, oldest)
					drop = append(drop, oldest)
				}
			}
		}
	}
	for _, r := range resp.GetResources() {
		for _, key := range r.GetAliases() {
			settle(key, true)
		}
	}
	for _, name := range resp.GetRemovedResources() {
		settle(name, false)
	}
	c.mu.Unlock()
	if len(drop) > 0 {
		_ = send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeURL, ResourceNamesUnsubscribe: drop})
	}
}
