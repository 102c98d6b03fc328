package ztunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// serveOutbound carries one connection the pod opened, in phases: find
// where it was going, route it, tunnel it with the pod's own SVID (or pass
// it through, when the destination is outside the mesh and policy
// allows), copy. It returns once the copy has started (relay).
func (z *Ztunnel) serveOutbound(p *pod, client net.Conn) {
	c := newConn(outbound, p, state.Peer{Principal: p.id.String(), Addr: addrPortOf(client.RemoteAddr())})
	up, input, err := z.connect(c, client)
	if err != nil {
		client.Close()
		z.refuse(c, err)
		return
	}
	z.relay(context.Background(), c, client, up, input)
}

// connect routes the pod's connection and opens its upstream. A
// passthrough comes with its input: policy decided it here, so it is
// tracked and re-checked.
func (z *Ztunnel) connect(c *conn, client net.Conn) (net.Conn, inputFunc, error) {
	dst, err := c.pod.net.OriginalDestination(client)
	if err != nil {
		return nil, nil, refuse(FlagNoRoute, err)
	}
	c.dst = dst
	if err := z.guard.outbound(z.state.Load(), dst); err != nil {
		return nil, nil, err
	}
	if err := z.demandState(dst); err != nil {
		return nil, nil, refuse(FlagNoRoute, err)
	}
	route, err := z.router.Route(dst)
	if err != nil {
		return nil, nil, refuse(FlagNoRoute, err)
	}
	c.routed(route)
	if route.Kind != RoutePassthrough {
		up, err := z.tunnel(c)
		return up, nil, err
	}
	input := passthroughInputFunc(c)
	up, err := z.passthrough(c, input)
	return up, input, err
}

// demandState has the state fetch what a connection to dst needs, when
// it comes from a controller that sends this node's scope only; without
// an answer the connection is refused rather than sent out as plaintext
// to what may be a mesh workload.
func (z *Ztunnel) demandState(dst netip.AddrPort) error {
	d := z.demand.Load()
	if d == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), DemandTimeout)
	defer cancel()
	if err := (*d).Demand(ctx, dst.Addr()); err != nil {
		return fmt.Errorf("ztunnel: no state for %s: %w", dst, err)
	}
	return nil
}

// tunnel opens an HBONE stream to the route with the pod's SVID.
func (z *Ztunnel) tunnel(c *conn) (net.Conn, error) {
	r := c.route
	peer, err := spiffeid.FromString(r.Identity)
	if err != nil {
		return nil, refuse(FlagNoRoute, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), z.cfg.DialTimeout)
	defer cancel()
	s, err := c.pod.pool.Dial(ctx, hbone.Request{
		Source: svidOf{z.cfg.Identities, c.pod.id}, Peer: peer,
		Addr: r.Dial, Authority: r.Authority, Forwarded: c.src.Addr,
	})
	if err != nil {
		return nil, refuse(tunnelFlag(err), err)
	}
	return s, nil
}

// passthroughInputFunc builds the input of a passthrough from the pod to
// the route's address; the destination's workload, if any, is looked up
// in the state given, so a re-check sees its current labels.
func passthroughInputFunc(c *conn) inputFunc {
	principal, src, dst := c.src.Principal, c.src.Addr, c.route.Dial
	return func(snap *state.Snapshot) (policy.Input, error) {
		return snap.PassthroughInput(principal, src, dst), nil
	}
}

// passthrough sends plaintext to a destination outside the mesh when the
// L4 policy allows the pod to reach it.
func (z *Ztunnel) passthrough(c *conn, input inputFunc) (net.Conn, error) {
	in, err := input(z.state.Load())
	if err != nil {
		return nil, refuse(FlagNoRoute, err)
	}
	if err := z.authorize(context.Background(), c, in); err != nil {
		return nil, err
	}
	return z.dial(context.Background(), c.pod, c.route.Dial)
}
