package ztunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// serveTunnel answers one HBONE tunnel to the pod, in phases: check the
// authority, build the L4 input from the verified peer, authorize, dial
// the workload, copy.
func (z *Ztunnel) serveTunnel(ctx context.Context, p *pod, t *hbone.Tunnel) {
	c := newConn(inbound, p, z.tunnelPeer(t))
	c.dst, c.mtls = t.Authority, true
	up, err := z.admitTunnel(ctx, c)
	if err != nil {
		t.Reject(tunnelError(err))
		z.refuse(c, err)
		return
	}
	s, err := t.Hijack() // the relay closes it
	if err != nil {
		up.Close()
		z.refuse(c, refuse(FlagConnect, err))
		return
	}
	z.relay(ctx, c, s, up, inboundInputFunc(c.src, c.dst))
}

// admitTunnel refuses an authority that is not the pod's, then admits
// the tunnel as any inbound connection.
func (z *Ztunnel) admitTunnel(ctx context.Context, c *conn) (net.Conn, error) {
	if !c.pod.owns(c.dst.Addr()) {
		return nil, refuse(FlagNoRoute, fmt.Errorf("%w: :authority %s is not an address of %s", hbone.ErrBadRequest, c.dst, c.pod.id))
	}
	return z.admit(ctx, c)
}

// tunnelPeer is who opened the tunnel: the verified SVID and the socket's
// source address. A Forwarded address is believed only from a waypoint
// known in the state, and only as the remote (original client) address:
// from any other peer it would let a workload choose its own source.ip.
func (z *Ztunnel) tunnelPeer(t *hbone.Tunnel) state.Peer {
	peer := state.Peer{Principal: t.Peer.String(), Addr: addrPortOf(t.RemoteAddr)}
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
func (z *Ztunnel) servePlaintext(p *pod, client net.Conn) {
	ctx := context.Background()
	c := newConn(inbound, p, state.Peer{Addr: addrPortOf(client.RemoteAddr())})
	up, err := z.admitPlaintext(ctx, c, client)
	if err != nil {
		client.Close()
		z.refuse(c, err)
		return
	}
	z.relay(ctx, c, client, up, inboundInputFunc(c.src, c.dst))
}

// admitPlaintext finds where the client was going, then admits it as any
// inbound connection.
func (z *Ztunnel) admitPlaintext(ctx context.Context, c *conn, client net.Conn) (net.Conn, error) {
	dst, err := c.pod.net.OriginalDestination(client)
	if err != nil {
		return nil, refuse(FlagNoRoute, err)
	}
	c.dst = dst
	return z.admit(ctx, c)
}

// admit takes an inbound connection through its phases up to the
// workload: refuse ztunnel's own ports, build the L4 input, authorize,
// dial the workload.
func (z *Ztunnel) admit(ctx context.Context, c *conn) (net.Conn, error) {
	if err := z.guard.inbound(c.dst); err != nil {
		return nil, err
	}
	in, _, err := z.state.Load().InboundInput(c.src, c.dst)
	if err != nil {
		return nil, refuse(FlagNoRoute, err)
	}
	if err := z.authorize(ctx, c, in); err != nil {
		return nil, err
	}
	return z.dial(ctx, c.pod, c.dst)
}

// inboundInputFunc rebuilds an inbound connection's input from a state.
func inboundInputFunc(peer state.Peer, dst netip.AddrPort) inputFunc {
	return func(snap *state.Snapshot) (policy.Input, error) {
		in, _, err := snap.InboundInput(peer, dst)
		return in, err
	}
}
