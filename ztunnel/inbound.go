package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// serveTunnel answers one HBONE tunnel to the pod, in phases: build the L4
// input from the verified peer, authorize, dial the workload, copy.
func (z *Ztunnel) serveTunnel(ctx context.Context, p *pod, t *hbone.Tunnel) {
	start := time.Now()
	peer := z.tunnelPeer(t)
	entry, labels := inboundReport(p, peer, t.Authority, true)
	if !p.owns(t.Authority.Addr()) {
		err := fmt.Errorf("%w: :authority %s is not an address of %s", hbone.ErrBadRequest, t.Authority, p.id)
		t.Reject(err)
		z.refuse(entry, labels, FlagNoRoute, err, start)
		return
	}
	if err := z.guard.inbound(t.Authority); err != nil {
		t.Reject(fmt.Errorf("%w: %w", hbone.ErrBadRequest, err))
		z.refuse(entry, labels, FlagLoop, err, start)
		return
	}
	up, flag, err := z.admit(ctx, p, peer, t.Authority, &entry)
	if err != nil {
		t.Reject(tunnelError(flag, err))
		z.refuse(entry, labels, flag, err, start)
		return
	}
	s, err := t.Hijack() // the relay closes it
	if err != nil {
		up.Close()
		z.refuse(entry, labels, FlagConnect, err, start)
		return
	}
	z.relay(ctx, s, up, entry, labels, start, inboundInputFunc(peer, t.Authority))
}

// tunnelPeer is who opened the tunnel: the verified SVID and the socket's
// source address. A Forwarded address is believed only from a waypoint
// known in the state, and only as the remote (original client) address:
// from any other peer it would let a workload choose its own source.ip.
func (z *Ztunnel) tunnelPeer(t *hbone.Tunnel) state.Peer {
	src, _ := netip.ParseAddrPort(t.RemoteAddr.String())
	peer := state.Peer{Principal: t.Peer.String(), Addr: netip.AddrPortFrom(src.Addr().Unmap(), src.Port())}
	if !t.Forwarded.IsValid() {
		return peer
	}
	if snap := z.state.Load(); snap != nil && snap.IsWaypoint(peer.Principal) {
		peer.Remote = t.Forwarded.Addr().Unmap()
	} else {
		z.log.Debug("Forwarded header ignored: the peer is not a waypoint", "peer", peer.Principal, "forwarded", t.Forwarded)
	}
	return peer
}

// servePlaintext answers one plaintext connection from outside the mesh:
// no identity, so only policy that admits anonymous peers lets it in.
func (z *Ztunnel) servePlaintext(p *pod, c net.Conn) {
	start := time.Now()
	ctx := context.Background()
	src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	dst, err := capture.OriginalDestination(c)
	peer := state.Peer{Addr: src}
	entry, labels := inboundReport(p, peer, dst, false)
	if err != nil {
		c.Close()
		z.refuse(entry, labels, FlagNoRoute, err, start)
		return
	}
	if err := z.guard.inbound(dst); err != nil {
		c.Close()
		z.refuse(entry, labels, FlagLoop, err, start)
		return
	}
	up, flag, err := z.admit(ctx, p, peer, dst, &entry)
	if err != nil {
		c.Close()
		z.refuse(entry, labels, flag, err, start)
		return
	}
	z.relay(ctx, c, up, entry, labels, start, inboundInputFunc(peer, dst))
}

// admit takes an inbound connection through its phases up to the
// workload: build the L4 input, authorize, dial the workload. On failure
// it returns the response flag of the phase that failed.
func (z *Ztunnel) admit(ctx context.Context, p *pod, peer state.Peer, dst netip.AddrPort, e *AccessEntry) (net.Conn, string, error) {
	in, _, err := z.state.Load().InboundInput(peer, dst)
	if err != nil {
		return nil, FlagNoRoute, err
	}
	if allowed, err := z.authorize(ctx, in, e); !allowed {
		return nil, FlagDenied, err
	}
	up, err := z.dialLocal(ctx, p, dst)
	if err != nil {
		return nil, FlagConnect, err
	}
	return up, "", nil
}

// inboundInputFunc rebuilds an inbound connection's input from a state.
func inboundInputFunc(peer state.Peer, dst netip.AddrPort) inputFunc {
	return func(snap *state.Snapshot) (policy.Input, error) {
		in, _, err := snap.InboundInput(peer, dst)
		return in, err
	}
}

// tunnelError is what a refused tunnel answers: 401 for policy, 503 for
// everything else (hbone.StatusFor maps the sentinels).
func tunnelError(flag string, err error) error {
	switch flag {
	case FlagDenied:
		return fmt.Errorf("%w: %w", hbone.ErrDenied, err)
	case FlagConnect:
		return fmt.Errorf("%w: %w", hbone.ErrUpstream, err)
	}
	return err
}

func inboundReport(p *pod, peer state.Peer, dst netip.AddrPort, mtls bool) (AccessEntry, ConnLabels) {
	e := AccessEntry{
		Direction: "inbound", Source: peer.Addr.String(), Destination: dst.String(), SourceID: peer.Principal,
		DestinationID: p.id.String(), DestinationWL: p.workload.Name, Namespace: p.workload.Namespace,
	}
	l := ConnLabels{
		Reporter: ReporterDestination, SourcePrincipal: peer.Principal,
		DestinationWorkload: p.workload.Name, DestinationNamespace: p.workload.Namespace,
		DestinationPrincipal: p.id.String(), MutualTLS: mtls,
	}
	return e, l
}

// authorize asks the policy; any error denies.
func (z *Ztunnel) authorize(ctx context.Context, in policy.Input, e *AccessEntry) (bool, error) {
	d, err := z.cfg.Policy.Decide(ctx, in)
	recordDecision(e, d)
	if err != nil {
		return false, err
	}
	if !d.Allow {
		return false, fmt.Errorf("%w: %s", errDenied, d.Reason)
	}
	return true, nil
}

// dialLocal connects to the pod's workload from inside its namespace, with
// ztunnel's mark so capture lets it through.
func (z *Ztunnel) dialLocal(ctx context.Context, p *pod, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, z.cfg.DialTimeout)
	defer cancel()
	c, err := p.ns.Dial(ctx, dst.String())
	if err != nil {
		return nil, fmt.Errorf("ztunnel: dial %s in %s: %w", dst, p.id, err)
	}
	return c, nil
}

// refuse reports a connection that did not open.
func (z *Ztunnel) refuse(e AccessEntry, l ConnLabels, flag string, err error, start time.Time) {
	l.ResponseFlags, e.Flags = flag, flag
	if e.Decision == "" && flag == FlagDenied {
		e.Decision = "deny"
	}
	if err != nil && !errors.Is(err, errDenied) {
		e.Error = err.Error()
	}
	e.Time, e.DurationMS = start, float64(time.Since(start).Microseconds())/1000
	z.cfg.Metrics.Opened(l)
	z.cfg.Metrics.Closed(l, 0, 0)
	z.cfg.AccessLog.Write(e)
	if flag == FlagNoSVID {
		z.log.Error("no SVID for the source workload: connection refused (never sent in plaintext); is the SPIRE agent's admin socket reachable and ztunnel an authorized delegate?",
			"identity", e.SourceID, "error", err)
	}
}

// relay copies both ways until the connection ends, closes both sides
// and reports it (metrics, access log). It returns at once: an idle
// connection holds no goroutine (hbone.StartRelay), and the report runs
// on the relay's. Connections that policy admitted here (input is not
// nil: inbound, and outbound passthrough) are tracked so that a policy or
// state change or a drain can close them.
func (z *Ztunnel) relay(ctx context.Context, client, up net.Conn, e AccessEntry, l ConnLabels, start time.Time, input inputFunc) {
	z.cfg.Metrics.Opened(l)
	ctx, cancel := context.WithCancel(ctx)
	var closedBy atomic.Value // the flag of whoever closed it: policy change, drain
	closedBy.Store(FlagNone)
	untrack := func() {}
	if input != nil {
		_, untrack = z.tracker.add(input, func(f string) { closedBy.Store(f); cancel() })
	}
	hbone.StartRelay(ctx, client, up, func(counts hbone.Counts, err error) {
		defer untrack()
		defer cancel()
		flag := closedBy.Load().(string)
		l.ResponseFlags, e.Flags = flag, flag
		if err != nil && !errors.Is(err, context.Canceled) { // Canceled: closed on purpose (policy change, drain)
			e.Error = err.Error()
		}
		// From the reporter's side: sent is what went back to the client.
		z.cfg.Metrics.Closed(l, counts.FromServer, counts.FromClient)
		e.Sent, e.Received = counts.FromServer, counts.FromClient
		e.Time, e.DurationMS = start, float64(time.Since(start).Microseconds())/1000
		if e.Decision == "" {
			e.Decision = "allow"
		}
		z.cfg.AccessLog.Write(e)
	})
}
