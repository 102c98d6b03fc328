package ztunnel

import (
	"context"
	"net"
	"net/netip"

	"github.com/regomesh/regomesh/ztunnel/capture"
)

// podNet is where a pod's sockets are made. ztunnel listens and dials
// through it only, never through the net package directly, so that a
// pod's listeners and dials are the pod's own. In production it is the
// pod's network namespace (netnsNet); the package's tests put pods on
// loopback, so the connection path runs in an ordinary process, without
// root.
type podNet interface {
	// Listen opens a TCP listener on addr (":15001" and the like) in the
	// pod's network.
	Listen(addr string) (net.Listener, error)
	// Dial connects to addr from the pod's network, past its capture
	// rules.
	Dial(ctx context.Context, addr string) (net.Conn, error)
	// OriginalDestination is where a connection accepted on a capture
	// listener was going before capture redirected it.
	OriginalDestination(c net.Conn) (netip.AddrPort, error)
}

// netnsNet is a pod's network namespace: listeners opened inside it,
// dials made from it with ztunnel's mark (which its nftables rules let
// through), and SO_ORIGINAL_DST.
type netnsNet struct{ *capture.Netns }

var _ podNet = netnsNet{}

func (netnsNet) OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	return capture.OriginalDestination(c)
}
