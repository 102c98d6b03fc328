package waypoint

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Routes are the Gateway API HTTPRoutes in force, attached to Services as
// GAMMA and Istio's waypoints attach them (parentRefs of kind Service):
// a request to such a service is matched against the routes' rules, its
// rule's filters applied, and it is sent to one of the rule's backends,
// by weight. A service no route attaches to is served as itself. Routes
// are immutable once built.
type Routes struct {
	// byService holds, per service hostname, the rule matches of every
	// route attached to it, in Gateway API precedence order.
	byService map[string][]*routeMatch
	// virtual holds, per service hostname, the matches of the
	// VirtualServices' http rules, in Istio's order: the oldest
	// VirtualService first, its rules and matches as written. They route
	// a service's port only where no HTTPRoute attaches (see match).
	virtual map[string][]*routeMatch
	count   int
}

// routeRule is one rule of an HTTPRoute, or one http rule of a
// VirtualService, compiled.
type routeRule struct {
	route    string // "<namespace>/<name>"
	index    int
	filters  []gwv1.HTTPRouteFilter
	backends []routeBackend
	timeout  time.Duration // 0: none
	retry    *retryPolicy  // nil: Istio's default policy; noRetries: one attempt
	fault    *faultPolicy  // nil: no fault injected
}

// name is how the access log names the rule: "<namespace>/<name>#<i>".
func (r *routeRule) name() string { return r.route + "#" + strconv.Itoa(r.index) }

type routeBackend struct {
	namespace, name string
	port            int // 0: the Service's only port, else the port addressed (a VirtualService destination without one)
	weight          int
}

// routeMatch is one match of a rule (a rule without matches has one,
// on every path), with what orders it among the others.
type routeMatch struct {
	rule    *routeRule
	port    int // the parentRef's port; 0: every port
	created time.Time
	order   int // the route's rank by namespace/name, then the rule's and match's position

	pathType   string // Exact, PathPrefix (whole elements), RegularExpression, or Prefix (characters, a VirtualService's)
	path       string
	pathRE     *regexp.Regexp
	ignoreCase bool        // Exact and Prefix compare case-insensitively (a VirtualService's ignoreUriCase)
	method     *valueMatch // nil: any
	headers    []valueMatch
	query      []valueMatch
}

// valueMatch tests a header, query parameter or method value.
type valueMatch struct {
	name   string
	kind   matchKind
	value  string
	re     *regexp.Regexp // for matchRegex
	absent bool           // inverted (a VirtualService's withoutHeaders): matches when the value is missing or does not match
}

type matchKind int

const (
	matchExact matchKind = iota
	matchPrefix
	matchRegex
	matchPresent // any value, even empty
)

func (v valueMatch) matches(got string, present bool) bool {
	ok := present
	switch v.kind {
	case matchExact:
		ok = ok && got == v.value
	case matchPrefix:
		ok = ok && strings.HasPrefix(got, v.value)
	case matchRegex:
		ok = ok && v.re.MatchString(got)
	}
	return ok != v.absent
}

// NewRoutes compiles HTTPRoutes for the waypoint of clusterDomain's
// services. A route that uses what the waypoint does not implement (a
// filter other than the header modifiers, redirect and URL rewrite;
// retries; session persistence; a backend in another namespace, or of
// another kind than Service) fails the whole set, so that the caller
// keeps the last good one: serving such a route without its feature would
// send requests where its author did not mean. parentRefs to anything
// but a Service (an ingress Gateway) are skipped with a note.
func NewRoutes(routes []*gwv1.HTTPRoute, clusterDomain string) (*Routes, []string, error) {
	return NewRouteSet(RouteResources{HTTPRoutes: routes}, clusterDomain)
}

// NewRouteSet compiles HTTPRoutes (as NewRoutes does) and VirtualServices
// (as Istio's waypoints read them) for the waypoint of clusterDomain's
// services. Where both route a service's port, the HTTPRoutes win, and a
// note says so. Anything either uses that the waypoint does not
// implement fails the whole set.
func NewRouteSet(res RouteResources, clusterDomain string) (*Routes, []string, error) {
	rs := &Routes{byService: map[string][]*routeMatch{}, virtual: map[string][]*routeMatch{}}
	notes, errs := addHTTPRoutes(rs, res.HTTPRoutes, clusterDomain)
	for _, ms := range rs.byService {
		slices.SortStableFunc(ms, precedence)
	}
	vnotes, verrs := addVirtualServices(rs, res.VirtualServices, clusterDomain)
	notes, errs = append(notes, vnotes...), append(errs, verrs...)
	if len(errs) > 0 {
		return nil, notes, errors.Join(errs...)
	}
	return rs, notes, nil
}

func addHTTPRoutes(rs *Routes, routes []*gwv1.HTTPRoute, clusterDomain string) (notes []string, errs []error) {
	slices.SortFunc(routes, func(a, b *gwv1.HTTPRoute) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name))
	})
	order := 0
	for _, hr := range routes {
		id := hr.Namespace + "/" + hr.Name
		rules, err := compileRules(hr)
		if err != nil {
			errs = append(errs, fmt.Errorf("HTTPRoute %s: %w", id, err))
			continue
		}
		for _, parent := range hr.Spec.ParentRefs {
			if !parentIsService(parent) {
				notes = append(notes, fmt.Sprintf("HTTPRoute %s: parentRef %s %s skipped: a waypoint serves routes attached to Services", id, ptrOr(parent.Kind, "Gateway"), parent.Name))
				continue
			}
			ns := string(ptrOr(parent.Namespace, gwv1.Namespace(hr.Namespace)))
			host := fmt.Sprintf("%s.%s.svc.%s", parent.Name, ns, clusterDomain)
			port := 0
			if parent.Port != nil {
				port = int(*parent.Port)
			}
			for _, r := range rules {
				for _, m := range r.matches {
					m := *m
					m.port, m.created, m.order = port, hr.CreationTimestamp.Time, order
					order++
					rs.byService[host] = append(rs.byService[host], &m)
				}
			}
			rs.count++
		}
	}
	return notes, errs
}

// Len is the number of (HTTPRoute or VirtualService, Service) attachments.
func (rs *Routes) Len() int { return rs.count }

// precedence orders matches as the Gateway API says: an Exact path, then
// the longest PathPrefix, (then regular expressions, its implementation
// choice here), a method, the most header matches, the most query
// matches; then the oldest route, then namespace/name; then the first
// rule and match in the route.
func precedence(a, b *routeMatch) int {
	rank := func(m *routeMatch) int {
		return map[string]int{"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}[m.pathType]
	}
	return cmp.Or(
		cmp.Compare(rank(a), rank(b)),
		-cmp.Compare(len(a.path), len(b.path)),
		-cmp.Compare(boolInt(a.method != nil), boolInt(b.method != nil)),
		-cmp.Compare(len(a.headers), len(b.headers)),
		-cmp.Compare(len(a.query), len(b.query)),
		a.created.Compare(b.created),
		cmp.Compare(a.order, b.order),
	)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// compiledRule pairs a rule with its matches before they are attached.
type compiledRule struct {
	*routeRule
	matches []*routeMatch
}

func compileRules(hr *gwv1.HTTPRoute) ([]compiledRule, error) {
	var out []compiledRule
	var errs []error
	for i, rule := range hr.Spec.Rules {
		at := fmt.Sprintf("spec.rules[%d]", i)
		r := &routeRule{route: hr.Namespace + "/" + hr.Name, index: i, filters: rule.Filters}
		if rule.SessionPersistence != nil {
			errs = append(errs, fmt.Errorf("%s.sessionPersistence: not supported by the waypoint yet", at))
		}
		for j, f := range rule.Filters {
			if err := checkFilter(f); err != nil {
				errs = append(errs, fmt.Errorf("%s.filters[%d]: %w", at, j, err))
			}
		}
		if rule.Timeouts != nil && rule.Timeouts.Request != nil {
			d, err := time.ParseDuration(string(*rule.Timeouts.Request))
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("%s.timeouts.request: %q is not a duration", at, *rule.Timeouts.Request))
			}
			r.timeout = d
		}
		var err error
		if r.retry, err = compileHTTPRouteRetry(rule.Retry, rule.Timeouts); err != nil {
			errs = append(errs, fmt.Errorf("%s.%w", at, err))
		}
		for j, b := range rule.BackendRefs {
			be, err := compileBackend(hr.Namespace, b)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.backendRefs[%d]: %w", at, j, err))
			}
			r.backends = append(r.backends, be)
		}
		c := compiledRule{routeRule: r}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.HTTPRouteMatch{{}}
		}
		for j, m := range matches {
			cm, err := compileMatch(m)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.matches[%d]: %w", at, j, err))
				continue
			}
			cm.rule = r
			c.matches = append(c.matches, cm)
		}
		out = append(out, c)
	}
	return out, errors.Join(errs...)
}

func checkFilter(f gwv1.HTTPRouteFilter) error {
	switch f.Type {
	case gwv1.HTTPRouteFilterRequestHeaderModifier, gwv1.HTTPRouteFilterResponseHeaderModifier,
		gwv1.HTTPRouteFilterRequestRedirect, gwv1.HTTPRouteFilterURLRewrite:
		return nil
	}
	return fmt.Errorf("filter type %s is not supported by the waypoint yet", f.Type)
}

func compileBackend(namespace string, b gwv1.HTTPBackendRef) (routeBackend, error) {
	if !isService(b.Group, b.Kind) {
		return routeBackend{}, fmt.Errorf("backend kind %s: only Services are supported", ptrOr(b.Kind, "Service"))
	}
	if b.Namespace != nil && string(*b.Namespace) != namespace {
		return routeBackend{}, fmt.Errorf("backend %s/%s is in another namespace: ReferenceGrants are not supported yet", *b.Namespace, b.Name)
	}
	if b.Port == nil {
		return routeBackend{}, fmt.Errorf("backend %s: port is required for a Service", b.Name)
	}
	if len(b.Filters) > 0 {
		return routeBackend{}, fmt.Errorf("backend %s: per-backend filters are not supported by the waypoint yet", b.Name)
	}
	return routeBackend{namespace: namespace, name: string(b.Name), port: int(*b.Port), weight: int(ptrOr(b.Weight, 1))}, nil
}

func compileMatch(m gwv1.HTTPRouteMatch) (*routeMatch, error) {
	cm := &routeMatch{pathType: "PathPrefix", path: "/"}
	if m.Path != nil {
		cm.pathType = string(ptrOr(m.Path.Type, gwv1.PathMatchPathPrefix))
		cm.path = ptrOr(m.Path.Value, "/")
		switch cm.pathType {
		case "Exact", "PathPrefix":
			if !strings.HasPrefix(cm.path, "/") {
				return nil, fmt.Errorf("path %q must start with /", cm.path)
			}
		case "RegularExpression":
			re, err := fullMatch(cm.path)
			if err != nil {
				return nil, fmt.Errorf("path: %w", err)
			}
			cm.pathRE = re
		default:
			return nil, fmt.Errorf("path type %s is not one of Exact, PathPrefix, RegularExpression", cm.pathType)
		}
	}
	if m.Method != nil {
		cm.method = &valueMatch{value: string(*m.Method)}
	}
	for _, h := range m.Headers {
		v, err := compileValue(string(h.Name), h.Value, h.Type)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", h.Name, err)
		}
		v.name = http.CanonicalHeaderKey(v.name)
		cm.headers = append(cm.headers, v)
	}
	for _, q := range m.QueryParams {
		v, err := compileValue(string(q.Name), q.Value, (*gwv1.HeaderMatchType)(q.Type))
		if err != nil {
			return nil, fmt.Errorf("query parameter %s: %w", q.Name, err)
		}
		cm.query = append(cm.query, v)
	}
	return cm, nil
}

func compileValue(name, value string, typ *gwv1.HeaderMatchType) (valueMatch, error) {
	v := valueMatch{name: name, value: value}
	switch ptrOr(typ, gwv1.HeaderMatchExact) {
	case gwv1.HeaderMatchExact:
	case gwv1.HeaderMatchRegularExpression:
		re, err := fullMatch(value)
		if err != nil {
			return v, err
		}
		v.kind, v.re = matchRegex, re
	default:
		return v, fmt.Errorf("match type %s is not one of Exact, RegularExpression", *typ)
	}
	return v, nil
}

// fullMatch compiles an RE2 expression that must match the whole value,
// as Envoy's safe_regex does.
func fullMatch(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %w", expr, err)
	}
	return re, nil
}

// parentIsService says whether a parentRef names a Service; a parentRef's
// kind defaults to Gateway.
func parentIsService(p gwv1.ParentReference) bool {
	return p.Kind != nil && isService(p.Group, p.Kind)
}

// isService says whether a backend reference names a Service (its
// default kind).
func isService[G ~string, K ~string](group *G, kind *K) bool {
	g, k := string(ptrOr(group, "")), string(ptrOr(kind, "Service"))
	return (g == "" || g == "core") && k == "Service"
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// match is the first match, in precedence order, of a request to service
// host on port; attached reports whether any route attaches to the
// service there at all (a request that matches none of them is 404).
// Where an HTTPRoute attaches to the service's port, the VirtualServices
// for the service are not read there: HTTPRoutes win.
func (rs *Routes) match(host string, port int, r *http.Request) (matched *routeMatch, attached bool) {
	if rs == nil {
		return nil, false
	}
	query := r.URL.Query()
	if m, attached := firstMatch(rs.byService[host], port, r, query); attached {
		return m, true
	}
	return firstMatch(rs.virtual[host], port, r, query)
}

func firstMatch(ms []*routeMatch, port int, r *http.Request, query map[string][]string) (matched *routeMatch, attached bool) {
	for _, m := range ms {
		if m.port != 0 && m.port != port {
			continue
		}
		attached = true
		if m.matches(r, query) {
			return m, true
		}
	}
	return nil, attached
}

func (m *routeMatch) matches(r *http.Request, query map[string][]string) bool {
	path := r.URL.Path
	if m.ignoreCase && m.pathType != "RegularExpression" {
		path = strings.ToLower(path) // m.path is lower-cased at compile; Envoy's regexes stay case-sensitive
	}
	switch m.pathType {
	case "Exact":
		if path != m.path {
			return false
		}
	case "Prefix":
		if !strings.HasPrefix(path, m.path) {
			return false
		}
	case "PathPrefix":
		if !pathPrefix(path, m.path) {
			return false
		}
	case "RegularExpression":
		if !m.pathRE.MatchString(path) {
			return false
		}
	}
	if m.method != nil && !m.method.matches(r.Method, true) {
		return false
	}
	for _, h := range m.headers {
		values := r.Header.Values(h.name)
		if h.name == "Host" {
			values = []string{r.Host} // net/http moves it out of the headers
		}
		if !h.matches(strings.Join(values, ","), len(values) > 0) {
			return false
		}
	}
	for _, q := range m.query {
		values, ok := query[q.name]
		first := ""
		if ok {
			first = values[0]
		}
		if !q.matches(first, ok) {
			return false
		}
	}
	return true
}

// pathPrefix is the Gateway API's PathPrefix: whole path elements, a
// trailing slash in the prefix ignored ("/foo" matches "/foo" and
// "/foo/bar", not "/foobar").
func pathPrefix(path, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return true
	}
	rest, ok := strings.CutPrefix(path, prefix)
	return ok && (rest == "" || rest[0] == '/')
}

// backend picks one of the rule's backends by weight: nil when every
// weight is zero or there is none (the Gateway API's 500).
func (r *routeRule) backend() *routeBackend {
	total := 0
	for _, b := range r.backends {
		total += b.weight
	}
	if total == 0 {
		return nil
	}
	n := rand.IntN(total)
	for i := range r.backends {
		if n < r.backends[i].weight {
			return &r.backends[i]
		}
		n -= r.backends[i].weight
	}
	return nil
}

// applyRequestFilters rewrites r as the rule's request filters say; a
// redirect is returned for the caller to answer.
func (r *routeRule) applyRequestFilters(req *http.Request, matched *routeMatch) (redirect string, status int) {
	for _, f := range r.filters {
		switch f.Type {
		case gwv1.HTTPRouteFilterRequestHeaderModifier:
			modifyHeaders(req.Header, f.RequestHeaderModifier)
		case gwv1.HTTPRouteFilterURLRewrite:
			if h := f.URLRewrite.Hostname; h != nil {
				req.Host = string(*h)
			}
			if p := f.URLRewrite.Path; p != nil {
				req.URL.Path = rewritePath(req.URL.Path, p, matched)
				req.URL.RawPath = ""
			}
		case gwv1.HTTPRouteFilterRequestRedirect:
			return redirectTo(req, f.RequestRedirect, matched)
		}
	}
	return "", 0
}

// applyResponseFilters edits an upstream response's headers.
func (r *routeRule) applyResponseFilters(h http.Header) {
	for _, f := range r.filters {
		if f.Type == gwv1.HTTPRouteFilterResponseHeaderModifier {
			modifyHeaders(h, f.ResponseHeaderModifier)
		}
	}
}

func modifyHeaders(h http.Header, m *gwv1.HTTPHeaderFilter) {
	if m == nil {
		return
	}
	for _, s := range m.Set {
		h.Set(string(s.Name), s.Value)
	}
	for _, a := range m.Add {
		h.Add(string(a.Name), a.Value)
	}
	for _, name := range m.Remove {
		h.Del(name)
	}
}

// rewritePath replaces the whole path, or the part the PathPrefix match
// matched.
func rewritePath(path string, p *gwv1.HTTPPathModifier, matched *routeMatch) string {
	switch p.Type {
	case gwv1.FullPathHTTPPathModifier:
		return ptrOr(p.ReplaceFullPath, "/")
	case gwv1.PrefixMatchHTTPPathModifier:
		if matched == nil || matched.pathType != "PathPrefix" {
			return path
		}
		prefix := strings.TrimSuffix(matched.path, "/")
		rest := strings.TrimPrefix(path, prefix)
		repl := strings.TrimSuffix(ptrOr(p.ReplacePrefixMatch, "/"), "/")
		if rest == "" {
			rest = "/"
			if repl != "" {
				rest = ""
			}
		}
		return cmp.Or(repl+rest, "/")
	}
	return path
}

func redirectTo(req *http.Request, rd *gwv1.HTTPRequestRedirectFilter, matched *routeMatch) (string, int) {
	scheme := ptrOr(rd.Scheme, "http")
	host := req.Host
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	if rd.Hostname != nil {
		host = string(*rd.Hostname)
	}
	if rd.Port != nil {
		host += ":" + strconv.Itoa(int(*rd.Port))
	}
	path := req.URL.Path
	if rd.Path != nil {
		path = rewritePath(path, rd.Path, matched)
	}
	loc := scheme + "://" + host + path
	if req.URL.RawQuery != "" {
		loc += "?" + req.URL.RawQuery
	}
	return loc, ptrOr(rd.StatusCode, 302)
}
