package ztunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// serveOutbound carries one connection the pod opened, in phases: find
// where it was going, route it, tunnel it with the pod's own SVID (or pass
// it through, when the destination is outside the mesh and policy
// allows), copy. It returns once the copy has started (relay).
func (z *Ztunnel) serveOutbound(p *pod, c net.Conn) {
	start := time.Now()
	entry := AccessEntry{Direction: "outbound", Source: c.RemoteAddr().String(), SourceID: p.id.String(), SourceWL: p.workload.Name}
	labels := ConnLabels{Reporter: ReporterSource, SourceWorkload: p.workload.Name, SourceNamespace: p.workload.Namespace, SourcePrincipal: p.id.String()}
	refuse := func(flag string, err error) {
		c.Close()
		z.refuse(entry, labels, flag, err, start)
	}
	dst, err := capture.OriginalDestination(c)
	if err != nil {
		refuse(FlagNoRoute, err)
		return
	}
	entry.Destination = dst.String()
	if err := z.guard.outbound(z.state.Load(), dst); err != nil {
		refuse(FlagLoop, err)
		return
	}
	route, err := z.router.Route(dst)
	if err != nil {
		refuse(FlagNoRoute, err)
		return
	}
	describeRoute(&entry, &labels, route)
	var up net.Conn
	var flag string
	var input inputFunc // policy decided a passthrough here: tracked, re-checked
	if route.Kind == RoutePassthrough {
		input = passthroughInputFunc(p, c, route)
		up, flag, err = z.passthrough(p, input, route, &entry)
	} else {
		up, flag, err = z.tunnel(p, c, route)
	}
	if err != nil {
		refuse(flag, err)
		return
	}
	z.relay(context.Background(), c, up, entry, labels, start, input)
}

func describeRoute(e *AccessEntry, l *ConnLabels, r Route) {
	if r.Workload != nil {
		e.DestinationWL, e.Namespace = r.Workload.Name, r.Workload.Namespace
		l.DestinationWorkload, l.DestinationNamespace = r.Workload.Name, r.Workload.Namespace
	}
	if r.Service != nil {
		l.DestinationService = r.Service.Hostname
	}
	e.DestinationID, l.DestinationPrincipal = r.Identity, r.Identity
	if r.Kind != RoutePassthrough {
		e.Hbone = r.Dial.String()
		l.MutualTLS = true
	}
}

// tunnel opens an HBONE stream to the route with the pod's SVID.
func (z *Ztunnel) tunnel(p *pod, c net.Conn, r Route) (net.Conn, string, error) {
	peer, err := spiffeid.FromString(r.Identity)
	if err != nil {
		return nil, FlagNoRoute, err
	}
	src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), z.cfg.DialTimeout)
	defer cancel()
	s, err := p.pool.Dial(ctx, hbone.Request{
		Source: svidOf{z.cfg.Identities, p.id}, Peer: peer,
		Addr: r.Dial, Authority: r.Authority, Forwarded: src,
	})
	switch {
	case errors.Is(err, hbone.ErrNoSVID):
		return nil, FlagNoSVID, err
	case errors.Is(err, hbone.ErrDenied):
		return nil, FlagDenied, err
	case err != nil:
		return nil, FlagConnect, err
	}
	return s, "", nil
}

// passthroughInputFunc builds the input of a passthrough from the pod to
// the route's address; the destination's workload, if any, is looked up
// in the state given, so a re-check sees its current labels.
func passthroughInputFunc(p *pod, c net.Conn, r Route) inputFunc {
	src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return func(snap *state.Snapshot) (policy.Input, error) {
		return snap.PassthroughInput(p.id.String(), src, r.Dial), nil
	}
}

// passthrough sends plaintext to a destination outside the mesh when the
// L4 policy allows the pod to reach it.
func (z *Ztunnel) passthrough(p *pod, input inputFunc, r Route, e *AccessEntry) (net.Conn, string, error) {
	in, err := input(z.state.Load())
	if err != nil {
		return nil, FlagNoRoute, err
	}
	d, err := z.cfg.Policy.Decide(context.Background(), in)
	recordDecision(e, d)
	if err != nil || !d.Allow {
		return nil, FlagDenied, errors.Join(errDenied, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), z.cfg.DialTimeout)
	defer cancel()
	up, err := p.ns.Dial(ctx, r.Dial.String())
	if err != nil {
		return nil, FlagConnect, err
	}
	return up, "", nil
}

var errDenied = errors.New("denied by policy")

func recordDecision(e *AccessEntry, d policy.Decision) {
	e.Decision = "deny"
	if d.Allow {
		e.Decision = "allow"
	}
	e.Policy, e.Rule, e.Reason = d.Policy, d.Rule, d.Reason
}
