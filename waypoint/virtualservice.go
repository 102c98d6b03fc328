package waypoint

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	networkingv1 "istio.io/api/networking/v1"
)

// VirtualService is an Istio VirtualService (networking.istio.io) as read
// from a file: its typed spec, and where each of its fields was written,
// so that every problem found later names file:line.
type VirtualService struct {
	Namespace, Name string
	Created         time.Time
	Spec            *networkingv1.VirtualService

	file  string
	line  int            // of the object
	lines map[string]int // field path ("spec.http[0].retries") -> line
}

// ID is "<namespace>/<name>".
func (vs *VirtualService) ID() string { return vs.Namespace + "/" + vs.Name }

// at is "file:line" of the field at path, or of the nearest field
// above it that has a line, or of the object.
func (vs *VirtualService) at(path string) string {
	for p := path; p != ""; p = parentPath(p) {
		if line, ok := vs.lines[p]; ok {
			return fmt.Sprintf("%s:%d", vs.file, line)
		}
	}
	return fmt.Sprintf("%s:%d", vs.file, vs.line)
}

// parentPath is "spec.http[0]" for "spec.http[0].retries", and
// "spec.http" for "spec.http[0]".
func parentPath(p string) string {
	if i := strings.LastIndexAny(p, ".["); i > 0 {
		return p[:i]
	}
	return ""
}

// fail is an error naming file:line, the VirtualService and the field.
func (vs *VirtualService) fail(path, format string, args ...any) error {
	return fmt.Errorf("%s: VirtualService %s: %s: %s", vs.at(path), vs.ID(), path, fmt.Sprintf(format, args...))
}

// meshGateway is what a VirtualService's gateways name for the mesh's own
// traffic, which is what a waypoint serves.
const meshGateway = "mesh"

// addVirtualServices compiles VirtualServices into rs, in Istio's order:
// the oldest first (then by namespace/name), each one's http rules and
// matches as written; the first that matches a request routes it. One
// bound to gateways other than the mesh is skipped with a note; what the
// waypoint does not implement is an error naming the field.
func addVirtualServices(rs *Routes, vss []*VirtualService, clusterDomain string) (notes []string, errs []error) {
	slices.SortFunc(vss, func(a, b *VirtualService) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID(), b.ID()))
	})
	for _, vs := range vss {
		if gws := vs.Spec.GetGateways(); len(gws) > 0 && !slices.Contains(gws, meshGateway) {
			notes = append(notes, fmt.Sprintf("%s: VirtualService %s skipped: bound to gateways %v, not the mesh (add %q to serve it in waypoints)", vs.at("spec.gateways"), vs.ID(), gws, meshGateway))
			continue
		}
		hosts, herrs := vsHosts(vs, clusterDomain)
		matches, merrs := compileVirtualService(vs, clusterDomain)
		if err := errors.Join(append(herrs, merrs...)...); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, host := range hosts {
			rs.virtual[host] = append(rs.virtual[host], matches...) // in order: no precedence sorts them
			rs.count++
		}
	}
	for host := range rs.virtual {
		if len(rs.byService[host]) > 0 {
			notes = append(notes, fmt.Sprintf("%s is routed by both HTTPRoutes and VirtualServices: on the ports an HTTPRoute attaches to, the HTTPRoutes win and the VirtualServices are not read (docs/waypoint.md#httproute-and-virtualservice-together)", host))
		}
	}
	slices.Sort(notes)
	return notes, errs
}

// vsHosts are the Service hostnames a VirtualService's hosts name.
func vsHosts(vs *VirtualService, clusterDomain string) ([]string, []error) {
	if len(vs.Spec.GetHosts()) == 0 {
		return nil, []error{vs.fail("spec.hosts", "required: the Services whose requests this VirtualService routes")}
	}
	var hosts []string
	var errs []error
	for i, h := range vs.Spec.GetHosts() {
		ns, name, err := serviceHost(h, vs.Namespace, clusterDomain)
		if err != nil {
			errs = append(errs, vs.fail(fmt.Sprintf("spec.hosts[%d]", i), "%v", err))
			continue
		}
		hosts = append(hosts, fmt.Sprintf("%s.%s.svc.%s", name, ns, clusterDomain))
	}
	slices.Sort(hosts)
	return slices.Compact(hosts), errs
}

// serviceHost reads a VirtualService host as a Service: a short name is
// in the VirtualService's namespace, as Istio resolves it; an FQDN is
// <name>.<namespace>.svc.<cluster domain>. Anything else (wildcards,
// hosts of ServiceEntries, <name>.<namespace>) is not a Service the
// waypoint knows.
func serviceHost(host, namespace, clusterDomain string) (ns, name string, err error) {
	if !strings.Contains(host, ".") && host != "" && !strings.Contains(host, "*") {
		return namespace, host, nil
	}
	if rest, ok := strings.CutSuffix(host, ".svc."+clusterDomain); ok {
		if name, ns, ok := strings.Cut(rest, "."); ok && name != "" && ns != "" && !strings.ContainsAny(rest, "*") && !strings.Contains(ns, ".") {
			return ns, name, nil
		}
	}
	return "", "", fmt.Errorf("%q is not a Service: the waypoint routes Services, named by short name (in the VirtualService's namespace) or as <name>.<namespace>.svc.%s (--cluster-domain)", host, clusterDomain)
}

// compileVirtualService compiles the http rules of vs into matches,
// each pointing at its rule.
func compileVirtualService(vs *VirtualService, clusterDomain string) ([]*routeMatch, []error) {
	var out []*routeMatch
	var errs []error
	if len(vs.Spec.GetHttp()) == 0 {
		errs = append(errs, vs.fail("spec.http", "required: the waypoint routes HTTP with a VirtualService's http rules (tcp and tls are not supported)"))
	}
	for i, h := range vs.Spec.GetHttp() {
		at := fmt.Sprintf("spec.http[%d]", i)
		r := &routeRule{route: vs.ID(), index: i}
		var rerrs []error
		r.backends, rerrs = vsBackends(vs, at, h, clusterDomain)
		errs = append(errs, rerrs...)
		if t := h.GetTimeout(); t != nil {
			if r.timeout = t.AsDuration(); r.timeout < 0 || t.CheckValid() != nil {
				errs = append(errs, vs.fail(at+".timeout", "must be a positive duration"))
			}
		}
		if h.GetRetries() != nil {
			p, err := compileRetry(h.GetRetries())
			if err != nil {
				errs = append(errs, vs.fail(at+".retries", "%v", err))
			}
			r.retry = p
		}
		if h.GetFault() != nil {
			f, err := compileFault(h.GetFault())
			if err != nil {
				errs = append(errs, vs.fail(at+".fault", "%v", err))
			}
			r.fault = f
		}
		if len(h.GetMatch()) == 0 {
			out = append(out, &routeMatch{rule: r, pathType: "Prefix"})
		}
		for j, m := range h.GetMatch() {
			cm, err := compileVSMatch(m)
			if err != nil {
				errs = append(errs, vs.fail(fmt.Sprintf("%s.match[%d]", at, j), "%v", err))
				continue
			}
			cm.rule = r
			out = append(out, cm)
		}
	}
	return out, errs
}

// vsBackends are a rule's destinations: one takes every request whatever
// its weight, several share them by weight, as Istio reads them.
func vsBackends(vs *VirtualService, at string, h *networkingv1.HTTPRoute, clusterDomain string) ([]routeBackend, []error) {
	routes := h.GetRoute()
	if len(routes) == 0 {
		return nil, []error{vs.fail(at+".route", "required: the waypoint forwards to destinations (redirect, directResponse and delegate are not supported)")}
	}
	var out []routeBackend
	var errs []error
	total := 0
	for k, d := range routes {
		dat := fmt.Sprintf("%s.route[%d]", at, k)
		ns, name, err := serviceHost(d.GetDestination().GetHost(), vs.Namespace, clusterDomain)
		if err != nil {
			errs = append(errs, vs.fail(dat+".destination.host", "%v", err))
			continue
		}
		weight := int(d.GetWeight())
		if len(routes) == 1 {
			weight = 1
		}
		if weight < 0 {
			errs = append(errs, vs.fail(dat+".weight", "must not be negative"))
		}
		total += weight
		out = append(out, routeBackend{namespace: ns, name: name, port: int(d.GetDestination().GetPort().GetNumber()), weight: weight})
	}
	if total == 0 && len(errs) == 0 {
		errs = append(errs, vs.fail(at+".route", "every weight is zero: no destination would get a request"))
	}
	return out, errs
}

// compileVSMatch compiles one HTTPMatchRequest: Envoy's semantics, RE2
// expressions matching whole values.
func compileVSMatch(m *networkingv1.HTTPMatchRequest) (*routeMatch, error) {
	cm := &routeMatch{pathType: "Prefix", port: int(m.GetPort()), ignoreCase: m.GetIgnoreUriCase()}
	if u := m.GetUri(); u != nil {
		switch v := u.GetMatchType().(type) {
		case *networkingv1.StringMatch_Exact:
			cm.pathType, cm.path = "Exact", v.Exact
		case *networkingv1.StringMatch_Prefix:
			cm.pathType, cm.path = "Prefix", v.Prefix
		case *networkingv1.StringMatch_Regex:
			re, err := fullMatch(v.Regex)
			if err != nil {
				return nil, fmt.Errorf("uri: %w", err)
			}
			cm.pathType, cm.path, cm.pathRE = "RegularExpression", v.Regex, re
		}
		if cm.ignoreCase && cm.pathType != "RegularExpression" {
			cm.path = strings.ToLower(cm.path)
		}
	}
	if m.GetMethod() != nil {
		v, err := stringMatch("", m.GetMethod())
		if err != nil {
			return nil, fmt.Errorf("method: %w", err)
		}
		cm.method = &v
	}
	var err error
	if cm.headers, err = stringMatches(m.GetHeaders(), "headers", true, false); err != nil {
		return nil, err
	}
	without, err := stringMatches(m.GetWithoutHeaders(), "withoutHeaders", true, true)
	if err != nil {
		return nil, err
	}
	cm.headers = append(cm.headers, without...)
	if cm.query, err = stringMatches(m.GetQueryParams(), "queryParams", false, false); err != nil {
		return nil, err
	}
	return cm, nil
}

// stringMatches compiles a map of header or query parameter matches, in
// name order; an empty match means the value is present.
func stringMatches(ms map[string]*networkingv1.StringMatch, field string, header, absent bool) ([]valueMatch, error) {
	var out []valueMatch
	for _, name := range slices.Sorted(maps.Keys(ms)) {
		if header && (strings.HasPrefix(name, ":") || name == "") {
			return nil, fmt.Errorf("%s.%s: pseudo-headers are not supported by the waypoint", field, name)
		}
		v, err := stringMatch(name, ms[name])
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", field, name, err)
		}
		if header {
			v.name = http.CanonicalHeaderKey(name)
		}
		v.absent = absent
		out = append(out, v)
	}
	return out, nil
}

func stringMatch(name string, m *networkingv1.StringMatch) (valueMatch, error) {
	v := valueMatch{name: name, kind: matchPresent}
	switch t := m.GetMatchType().(type) {
	case *networkingv1.StringMatch_Exact:
		v.kind, v.value = matchExact, t.Exact
	case *networkingv1.StringMatch_Prefix:
		v.kind, v.value = matchPrefix, t.Prefix
	case *networkingv1.StringMatch_Regex:
		re, err := fullMatch(t.Regex)
		if err != nil {
			return v, err
		}
		v.kind, v.value, v.re = matchRegex, t.Regex, re
	}
	return v, nil
}
