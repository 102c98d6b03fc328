package waypoint

import (
	"context"
	"errors"
	"time"

	"github.com/regomesh/regomesh/hbone"
)

// relayTCP serves a tunnel that does not carry HTTP: one L4 decision for
// the connection, then the bytes relayed to the chosen endpoint's ztunnel;
// then report: Istio's TCP metrics and one access-log line.
func (w *Waypoint) relayTCP(ctx context.Context, cl *client, c *tunnelConn) {
	x := &exchange{kind: "tcp", start: time.Now(), peer: cl.peer, source: cl.source, target: cl.target}
	opened := false
	defer func() {
		x.end = time.Now()
		w.finishEndpoint(x)
		if !opened {
			w.cfg.Metrics.tcpConnOpened(x) // refused: opened and closed at once, with its flag
		}
		w.cfg.Metrics.tcpConnClosed(x)
		w.cfg.AccessLog.Write(x.entry())
	}()
	snap := w.state.Load()
	in, target, err := snap.WaypointInput(cl.peer, cl.target.Addr, nil)
	if err != nil {
		x.fail(FlagNoRoute, err)
		c.Close()
		return
	}
	x.target = target
	if !w.authorize(ctx, in, x) {
		c.Close()
		return
	}
	if err = w.pickEndpoint(snap, target, x); err != nil {
		x.fail(FlagNoHealthy, err)
		c.Close()
		return
	}
	up, err := w.dialUpstream(ctx, cl, x.upstream.String())
	if err != nil {
		x.fail(FlagUpstream, err)
		c.Close()
		return
	}
	w.cfg.Metrics.tcpConnOpened(x)
	opened = true
	counts, err := hbone.Relay(ctx, c, up)
	x.reqBytes, x.respBytes = counts.FromClient, counts.FromServer
	if err != nil && !errors.Is(err, context.Canceled) {
		x.err = err
	}
}
