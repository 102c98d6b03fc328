package waypoint

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"weak"

	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// client is one tunnel's client, as every request on the tunnel sees it:
// who (the verified peer), from where, for what target, and the upstream
// transports that carry its requests onward. Transports are per client so
// that each upstream tunnel's Forwarded names the right client; they share
// the HBONE pool's connections underneath.
type client struct {
	peer   state.Peer
	source *state.Workload
	trace  hbone.TraceParent
	target state.Target

	// l4 is the input every request on the tunnel starts from, for the
	// state it was built from (clientInput).
	l4 atomic.Pointer[clientInput]
	// series are the request metrics' children its last request counted in.
	series atomic.Pointer[requestSeries]

	mu     sync.Mutex
	closed bool // the tunnel ended: no transport is made any more
	h1     *http.Transport
	h2     *http2.Transport
}

// clientInput is a tunnel's policy input at layer l4 (source, destination,
// connection) and its resolved target, as of one state snapshot.
type clientInput struct {
	snap   weak.Pointer[state.Snapshot] // weak: an idle tunnel does not keep an old state alive
	in     policy.Input
	target state.Target
}

// input is the policy input of req (nil: the connection at layer l4) on
// the tunnel, as of snap. What comes from the tunnel and the state is
// built once per tunnel and state, not per request: a kept-alive
// connection's requests share it until the state changes.
func (cl *client) input(snap *state.Snapshot, req *policy.Request) (policy.Input, state.Target, error) {
	base := cl.l4.Load()
	if base == nil || base.snap.Value() != snap {
		in, target, err := snap.WaypointInput(cl.peer, cl.target.Addr, nil)
		if err != nil {
			return policy.Input{}, state.Target{}, err
		}
		// Prepared here once, the addresses are not parsed again for each
		// request's decision. An input that does not prepare stays as
		// built: Decide refuses it with the reason, request by request.
		if p := in; p.Prepare() == nil {
			in = p
		}
		base = &clientInput{snap: weak.Make(snap), in: in, target: target}
		cl.l4.Store(base)
	}
	in := base.in
	if req != nil {
		in.Layer, in.Request = policy.L7, req
	}
	return in, base.target, nil
}

// clientOf is who opened t: the verified SVID (a ztunnel tunnels with the
// client workload's own) and the socket's source address. A Forwarded
// address is believed only from a waypoint known in the state, and only as
// the remote (original client) address, as ztunnel does.
func (w *Waypoint) clientOf(t *hbone.Tunnel) *client {
	src, _ := netip.ParseAddrPort(t.RemoteAddr.String())
	cl := &client{
		peer:  state.Peer{Principal: t.Peer.String(), Addr: netip.AddrPortFrom(src.Addr().Unmap(), src.Port())},
		trace: t.TraceParent,
	}
	snap := w.state.Load()
	if snap == nil {
		return cl
	}
	cl.source, _ = snap.WorkloadByIP(cl.peer.Addr.Addr())
	if t.Forwarded.IsValid() {
		if snap.IsWaypoint(cl.peer.Principal) {
			cl.peer.Remote = t.Forwarded.Addr().Unmap()
		} else {
			w.log.Debug("Forwarded header ignored: the peer is not a waypoint", "peer", cl.peer.Principal, "forwarded", t.Forwarded)
		}
	}
	return cl
}

// original is the original client's address, for the upstream Forwarded.
func (cl *client) original() netip.AddrPort {
	if cl.peer.Remote.IsValid() {
		return netip.AddrPortFrom(cl.peer.Remote, 0)
	}
	return cl.peer.Addr
}

// closeUpstream releases the client's upstream connections when its
// tunnel ends.
func (cl *client) closeUpstream() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.closed = true
	if cl.h1 != nil {
		cl.h1.CloseIdleConnections()
	}
	if cl.h2 != nil {
		cl.h2.CloseIdleConnections()
	}
}

type clientKey struct{}

func withClient(ctx context.Context, cl *client) context.Context {
	return context.WithValue(ctx, clientKey{}, cl)
}

func clientFrom(ctx context.Context) *client {
	cl, _ := ctx.Value(clientKey{}).(*client)
	return cl
}
