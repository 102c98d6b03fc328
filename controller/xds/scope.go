package xds

import (
	"net/netip"
	"strings"

	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// What each proxy is sent of the Address type.
//
// A waypoint is sent every resource: its routes may send a request to
// any service of the mesh, and the controller does not read routes.
//
// A ztunnel is sent its node's scope, whatever it subscribes with:
//
//   - its node's workloads (first, in a response of their own);
//   - with each of them, the services selecting it (not their other
//     endpoints) and the waypoints the workload and those services name,
//     so that inbound traffic finds its destination's services and knows
//     a waypoint's identity;
//   - every name it subscribed to (on demand, as Istio's ztunnel does): an
//     address key ("<network>/<ip>", wire.AddressKey) or a resource name,
//     with what a connection to it needs: a service brings every endpoint
//     and its waypoint; a workload brings its waypoint.
//
// So a ztunnel of node A holds node B's workload only while it subscribes
// to that workload, to its address, or to a service it is an endpoint of,
// or while it is a waypoint named by A's scope. The scope is recomputed
// from the current state whenever the state or the ztunnel's
// subscriptions change, so a new endpoint of a service the ztunnel
// subscribed to reaches it, and a workload leaving its scope is removed
// from it.

// maxDemanded bounds the names one subscription holds: each is a map entry
// kept for the stream's life.
const maxDemanded = 1 << 16

// scopeIndex finds, in one state, what a ztunnel's scope needs without
// walking the whole state. It is built by Update and never modified.
type scopeIndex struct {
	byNode    map[string][]string   // node -> its workloads' names
	byAddress map[netip.Addr]string // a workload's IP or a service's VIP -> its resource name
	endpoints map[string][]string   // service name -> the workloads it selects
	waypoints map[string]string     // "<namespace>/<name>" -> that workload's resource name
}

// resourceRefs is what a resource names that a proxy holding it needs: a
// waypoint ("<namespace>/<name>") and, for a workload, the services
// selecting it.
type resourceRefs struct {
	waypoint string
	services []string
}

// newScopeIndex indexes snap, whose resources are all.
func newScopeIndex(snap *state.Snapshot, all map[string]*resource) *scopeIndex {
	ix := &scopeIndex{
		byNode: map[string][]string{}, byAddress: map[netip.Addr]string{}, endpoints: map[string][]string{},
		waypoints: make(map[string]string, len(snap.Workloads)),
	}
	for _, svc := range snap.Services {
		for _, vip := range svc.VIPs {
			ix.byAddress[vip] = wire.ServiceName(svc)
		}
	}
	for _, w := range snap.Workloads {
		name := wire.WorkloadName(w)
		ix.byNode[w.Node] = append(ix.byNode[w.Node], name)
		for _, ip := range w.IPs {
			ix.byAddress[ip] = name
		}
		ix.waypoints[w.Namespace+"/"+w.Name] = name
		for _, svc := range all[name].refs.services {
			ix.endpoints[svc] = append(ix.endpoints[svc], name)
		}
	}
	return ix
}

// resolve names the resource a subscribed name stands for: the resource
// itself, or the workload or service at an address key. ok is false for
// a name that stands for nothing in this state.
func (ix *scopeIndex) resolve(all map[string]*resource, name string) (string, bool) {
	if _, ok := all[name]; ok {
		return name, true
	}
	if ip, ok := parseAddressKey(name); ok {
		r, ok := ix.byAddress[ip]
		return r, ok
	}
	return "", false
}

// parseAddressKey reads "<network>/<ip>", Istio's on-demand address key.
func parseAddressKey(name string) (netip.Addr, bool) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(name[i+1:])
	return ip.Unmap(), err == nil
}

// ztunnelScope is what the ztunnel of node holds when it subscribed to
// demanded (see above).
func (ix *scopeIndex) ztunnelScope(all map[string]*resource, node string, demanded map[string]bool) map[string]*resource {
	s := scope{ix: ix, all: all, out: map[string]*resource{}}
	for _, name := range ix.byNode[node] {
		s.add(name, false)
	}
	for name := range demanded {
		if r, ok := ix.resolve(all, name); ok {
			s.add(r, true)
		}
	}
	return s.out
}

// scope gathers resources and what each brings along.
type scope struct {
	ix  *scopeIndex
	all map[string]*resource
	out map[string]*resource
}

// add puts name in the scope with its waypoint; a workload brings its
// services (with their endpoints only if reach), a service its endpoints
// if reach.
func (s *scope) add(name string, reach bool) {
	r, ok := s.all[name]
	if !ok {
		return
	}
	if _, held := s.out[name]; held && !reach {
		return
	}
	s.out[name] = r
	refs := r.refs
	if wp, ok := s.ix.waypoints[refs.waypoint]; ok {
		s.addOnce(wp)
	}
	if r.service {
		if reach {
			for _, ep := range s.ix.endpoints[name] {
				s.addOnce(ep)
			}
		}
		return
	}
	for _, svc := range refs.services {
		s.addOnce(svc)
	}
}

// addOnce adds what another resource brings along: a workload with its
// waypoint and services, a service with its waypoint, not its endpoints.
func (s *scope) addOnce(name string) {
	if _, held := s.out[name]; !held {
		s.add(name, false)
	}
}
