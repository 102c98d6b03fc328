package ztunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// HBONEPort is where every ztunnel and waypoint terminates tunnels.
const HBONEPort = 15008

// RouteKind says how an outbound connection is carried.
type RouteKind int

const (
	// RouteWorkload tunnels to the destination workload's ztunnel.
	RouteWorkload RouteKind = iota
	// RouteService tunnels to an endpoint chosen among the service's.
	RouteService
	// RouteWaypoint tunnels to the waypoint serving the destination, with
	// the original destination as :authority.
	RouteWaypoint
	// RoutePassthrough sends plaintext to a destination outside the mesh.
	RoutePassthrough
)

func (k RouteKind) String() string {
	return [...]string{"workload", "service", "waypoint", "passthrough"}[k]
}

// Route is where one outbound connection goes.
type Route struct {
	Kind RouteKind
	// Workload is the destination workload (the chosen endpoint for a
	// service); nil when the destination is unknown (passthrough).
	Workload *state.Workload
	Service  *state.Service
	// Waypoint is set for RouteWaypoint.
	Waypoint *state.Workload
	// Dial is the address to connect to: ip:15008 for HBONE, the
	// destination itself for passthrough.
	Dial netip.AddrPort
	// Authority is the CONNECT :authority, the address the tunnel's far
	// end dials.
	Authority netip.AddrPort
	// Identity is the SPIFFE ID the far end must present (the destination
	// workload's, or the waypoint's); empty for passthrough.
	Identity string
}

// ErrNoEndpoint: a service has no endpoint to send to.
var ErrNoEndpoint = errors.New("ztunnel: service has no endpoints")

// Router picks routes from the state in force.
type Router struct {
	state *atomic.Pointer[state.Snapshot]
	next  atomic.Uint64 // round robin across service endpoints
}

// NewRouter routes with whatever snapshot s holds at each call.
func NewRouter(s *atomic.Pointer[state.Snapshot]) *Router { return &Router{state: s} }

// Route decides where a connection from src to dst goes.
func (r *Router) Route(dst netip.AddrPort) (Route, error) {
	snap := r.state.Load()
	if snap == nil {
		return Route{}, fmt.Errorf("ztunnel: no state loaded")
	}
	ip := dst.Addr().Unmap()
	if svc, ok := snap.ServiceByVIP(ip); ok {
		return r.serviceRoute(snap, svc, dst)
	}
	w, ok := snap.WorkloadByIP(ip)
	if !ok || w.Protocol != state.HBONE {
		return Route{Kind: RoutePassthrough, Workload: w, Dial: dst, Authority: dst}, nil
	}
	if wp, ok := snap.Waypoint(w.Waypoint); ok {
		return waypointRoute(wp, w, nil, dst), nil
	}
	return workloadRoute(w, nil, netip.AddrPortFrom(ip, dst.Port())), nil
}

func (r *Router) serviceRoute(snap *state.Snapshot, svc *state.Service, dst netip.AddrPort) (Route, error) {
	if wp, ok := snap.Waypoint(svc.Waypoint); ok {
		return waypointRoute(wp, nil, svc, dst), nil
	}
	target, ok := targetPort(svc, dst.Port())
	if !ok {
		return Route{}, fmt.Errorf("ztunnel: service %s has no port %d", svc.Hostname, dst.Port())
	}
	endpoints := snap.Endpoints(svc)
	if len(endpoints) == 0 {
		return Route{}, fmt.Errorf("%w: %s", ErrNoEndpoint, svc.Hostname)
	}
	ep := endpoints[r.next.Add(1)%uint64(len(endpoints))]
	addr := netip.AddrPortFrom(ep.IPs[0], uint16(target))
	if ep.Protocol != state.HBONE {
		return Route{Kind: RoutePassthrough, Workload: ep, Service: svc, Dial: addr, Authority: addr}, nil
	}
	route := workloadRoute(ep, svc, addr)
	route.Kind = RouteService
	return route, nil
}

func workloadRoute(w *state.Workload, svc *state.Service, addr netip.AddrPort) Route {
	return Route{
		Kind: RouteWorkload, Workload: w, Service: svc,
		Dial:      netip.AddrPortFrom(addr.Addr(), HBONEPort),
		Authority: addr, Identity: w.Identity(),
	}
}

func waypointRoute(wp, w *state.Workload, svc *state.Service, dst netip.AddrPort) Route {
	return Route{
		Kind: RouteWaypoint, Workload: w, Service: svc, Waypoint: wp,
		Dial:      netip.AddrPortFrom(wp.IPs[0], HBONEPort),
		Authority: dst, Identity: wp.Identity(),
	}
}

func targetPort(svc *state.Service, port uint16) (int, bool) {
	for _, p := range svc.Ports {
		if p.Port == int(port) {
			return p.TargetPort, true
		}
	}
	return 0, false
}
