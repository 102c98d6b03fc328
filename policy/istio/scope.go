package istio

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// scope is the set of destinations a policy applies to, as the
// definitions of its `applies` rule.
type scope struct {
	description  string
	attached     bool // false: the policy applies to nothing in this bundle
	always       bool // applies to every destination
	waypointOnly bool // targetRefs: enforced by waypoints (L7) only
	when         disj // the definitions of `applies`, when not always
}

// resolveScope applies Istio's attachment rules: root namespace without
// selector is mesh-wide; a selector picks workloads of the policy's
// namespace (of every namespace from the root namespace); targetRefs
// attach to waypoints: requests to a Service, the waypoint Gateway, or
// every waypoint (GatewayClass istio-waypoint from the root namespace).
func (t *policyTranslator) resolveScope() scope {
	p := t.p
	root := p.Namespace == t.opts.RootNamespace
	if len(p.TargetRefs) > 0 {
		return t.targetScope()
	}
	var c conj
	where := "in namespace " + p.Namespace
	if root {
		where = "in every namespace (root namespace " + p.Namespace + ")"
	} else {
		c = append(c, "input.destination.namespace == "+quote(p.Namespace))
	}
	if len(p.Selector) == 0 {
		if len(c) == 0 {
			return scope{description: "the whole mesh (root namespace " + p.Namespace + ", no selector)", attached: true, always: true}
		}
		return scope{description: "every workload " + where, attached: true, when: disj{c}}
	}
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(p.Selector)) {
		c = append(c, "input.destination.labels"+refKey(k)+" == "+quote(p.Selector[k]))
		labels = append(labels, k+"="+p.Selector[k])
	}
	return scope{description: "workloads labelled " + strings.Join(labels, ", ") + " " + where, attached: true, when: disj{c}}
}

func (t *policyTranslator) targetScope() scope {
	p := t.p
	var when disj
	var what []string
	for _, ref := range p.TargetRefs {
		switch targetKind(ref) {
		case kindService:
			host := fmt.Sprintf("%s.%s.svc.%s", ref.Name, p.Namespace, t.opts.ClusterDomain)
			when = union(when, disj{{`input.layer == "l7"`, "input.destination.service == " + quote(host)}})
			what = append(what, "requests to Service "+p.Namespace+"/"+ref.Name)
		case kindGateway:
			gw := p.Namespace + "/" + ref.Name
			if t.opts.Waypoint != gw {
				t.warn(-1, "targets the waypoint Gateway %s, which only that waypoint's bundle enforces: translate with the waypoint set to %s", gw, gw)
				continue
			}
			when = union(when, disj{{`input.layer == "l7"`}})
			what = append(what, "the waypoint "+gw)
		case kindGatewayClass:
			if ref.Name != waypointClass || p.Namespace != t.opts.RootNamespace {
				t.warn(-1, "targetRef to GatewayClass %q attaches to nothing: only GatewayClass %q from the root namespace %s applies, to every waypoint", ref.Name, waypointClass, t.opts.RootNamespace)
				continue
			}
			when = union(when, disj{{`input.layer == "l7"`}})
			what = append(what, "every waypoint")
		}
	}
	if len(when) == 0 {
		return scope{description: "nothing in this bundle (see the notes below)", waypointOnly: true}
	}
	if slices.ContainsFunc(when, func(c conj) bool { return len(c) == 1 }) {
		when = disj{{`input.layer == "l7"`}} // every request in this waypoint: the services add nothing
	}
	if t.opts.Waypoint != "" {
		// A waypoint's bundle: the policy applies to the connections it
		// relays as TCP (l4) too, as rule() writes them.
		return t.waypointScope(what, when)
	}
	return scope{description: "in waypoints, " + strings.Join(what, "; "), attached: true, waypointOnly: true, when: when}
}

// waypointScope is a targetRefs scope in the bundle of the waypoint it is
// translated for, where every decision is the waypoint's: requests (l7)
// and relayed TCP (l4) alike, so the layer is no condition.
func (t *policyTranslator) waypointScope(what []string, when disj) scope {
	description := "in the waypoint " + t.opts.Waypoint + " (requests, and connections relayed as TCP), " + strings.Join(what, "; ")
	var out disj
	for _, c := range when {
		c = slices.DeleteFunc(slices.Clone(c), func(term string) bool { return term == `input.layer == "l7"` })
		if len(c) == 0 {
			return scope{description: description, attached: true, always: true, waypointOnly: true}
		}
		out = append(out, c)
	}
	return scope{description: description, attached: true, waypointOnly: true, when: out}
}
