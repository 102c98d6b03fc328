package ztunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// DefaultServicePorts are the ports ztunnel serves besides its three
// capture listeners: admin (15000), metrics (15020) and readiness (15021).
var DefaultServicePorts = []uint16{15000, 15020, 15021}

// captureListeners are the ports ztunnel listens on inside every enrolled
// pod's namespace.
var captureListeners = []uint16{capture.OutboundPort, capture.PlaintextPort, capture.HBONEPort}

// errLoop refuses a connection addressed to one of ztunnel's own ports: a
// pod dialing 127.0.0.1:15001, or a peer asking for <pod-ip>:15001 in a
// CONNECT. Carried on, it would be captured again and re-sent under the
// pod's identity, hop after hop, until the node runs out of descriptors.
var errLoop = errors.New("the destination is one of ztunnel's own ports")

// loopGuard tells which destinations would bring a connection back to
// ztunnel. The zero value guards the capture listeners only.
type loopGuard struct {
	servicePorts []uint16
}

func (g loopGuard) own(port uint16) bool {
	return slices.Contains(captureListeners, port) || slices.Contains(g.servicePorts, port)
}

// outbound refuses (LOOP) an original destination on one of ztunnel's
// ports at loopback, an unspecified address, or any workload's address
// (where ztunnel listens in the workload's namespace).
func (g loopGuard) outbound(snap *state.Snapshot, dst netip.AddrPort) error {
	if !g.own(dst.Port()) {
		return nil
	}
	addr := dst.Addr().Unmap()
	workload := false
	if snap != nil {
		_, workload = snap.WorkloadByIP(addr)
	}
	if addr.IsLoopback() || addr.IsUnspecified() || workload {
		return refuse(FlagLoop, fmt.Errorf("ztunnel: %s: %w", dst, errLoop))
	}
	return nil
}

// inbound refuses (LOOP) a tunnel authority or an original destination
// on one of ztunnel's ports; the address is already known to be the
// pod's.
func (g loopGuard) inbound(dst netip.AddrPort) error {
	if g.own(dst.Port()) {
		return refuse(FlagLoop, fmt.Errorf("ztunnel: %s: %w", dst, errLoop))
	}
	return nil
}
