package waypoint

import (
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The routes of the tests, attached to the web service as GAMMA routes
// are: rewrites, a header match and a weighted split to web2, an exact
// path that wins over a longer-declared prefix, a redirect, response
// headers, and a request timeout.
const testRoutes = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /public}}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: v2}]}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /public}, headers: [{name: x-env, value: canary}]}]
    backendRefs: [{name: web2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web, port: 80, weight: 0}, {name: web2, port: 80, weight: 5}]
  - matches: [{path: {type: PathPrefix, value: /public}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-token, value: from-route}]}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /public/special}}]
    backendRefs: [{name: web2, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}
  - matches: [{path: {type: Exact, value: /public/slow}}]
    timeouts: {request: 50ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /nowhere}}]
    backendRefs: [{name: web, port: 80, weight: 0}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ingress, namespace: shop}
spec:
  parentRefs: [{name: public-gateway}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
`

// TestHTTPRoutes: requests to a service with routes follow them.
func TestHTTPRoutes(t *testing.T) {
	m := newTestMesh(t)
	m.loadRego(t, "package mesh.policies.test.p\n\nopen := true\n") // no policy selects web: every request is allowed
	path := filepath.Join(t.TempDir(), "routes.yaml")
	write(t, path, testRoutes)
	routes, err := ReadHTTPRoutes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	rs, notes, err := NewRoutes(routes, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "HTTPRoute shop/ingress: parentRef Gateway public-gateway skipped") {
		t.Errorf("notes %q, want the ingress route's Gateway parent skipped", notes)
	}
	m.wp.SetRoutes(rs)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))

	for _, tc := range []struct {
		name, path string
		header     map[string]string
		status     int
		body       string // the backend's answer, or the waypoint's
		upstream   netip.Addr
		check      func(t *testing.T, a answer)
	}{
		{name: "prefix rewritten", path: "/v2/a", status: 200, body: "hello /public/a data", upstream: webIP,
			check: func(t *testing.T, a answer) {
				if a.header.Get("X-Route") != "v2" {
					t.Errorf("response headers %v, want x-route: v2 from the rule", a.header)
				}
			}},
		{name: "header match", path: "/public/a", header: map[string]string{"X-Env": "canary"}, status: 200, upstream: web2IP},
		{name: "weights", path: "/split/x", status: 200, upstream: web2IP},
		{name: "request header set", path: "/public/a", header: map[string]string{"X-Token": "from-client"}, status: 200, upstream: webIP,
			check: func(t *testing.T, a answer) {
				if got := a.header.Get("X-Seen-X-Token"); got != "from-route" {
					t.Errorf("backend saw x-token %q, want the route's from-route", got)
				}
			}},
		{name: "exact beats a prefix declared first", path: "/public/special", status: 200, upstream: web2IP},
		{name: "no rule matches", path: "/other", status: 404, body: "route not found"},
		{name: "no weight", path: "/nowhere", status: 500, body: "no backend"},
		{name: "redirect", path: "/old?x=1", status: 301,
			check: func(t *testing.T, a answer) {
				if got := a.header.Get("Location"); got != "http://web.shop/new?x=1" {
					t.Errorf("Location %q", got)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(accessLines(t, m))
			c := c
			if tc.status == 301 {
				c = &http.Client{Transport: c.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			}
			a := do(t, c, "GET", "http://web.shop"+tc.path, tc.header)
			if a.status != tc.status || (tc.body != "" && a.body != tc.body) {
				t.Fatalf("GET %s: %d %q, want %d %q", tc.path, a.status, a.body, tc.status, tc.body)
			}
			waitRequests(t, m, before+1)
			e := accessLines(t, m)[before]
			if tc.upstream.IsValid() && (e.Upstream != netip.AddrPortFrom(tc.upstream, 8080).String() || !strings.HasPrefix(e.Route, "shop/web#")) {
				t.Errorf("access log %+v, want upstream %s:8080 and the route named", e, tc.upstream)
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}

	t.Run("request timeout", func(t *testing.T) {
		before := len(accessLines(t, m))
		a := do(t, c, "GET", "http://web.shop/public/slow", nil)
		<-m.slow // the backend got it, and took longer than the rule allows
		if a.status != http.StatusGatewayTimeout || a.body != "upstream request timeout" {
			t.Fatalf("got %d %q, want 504 upstream request timeout", a.status, a.body)
		}
		waitRequests(t, m, before+1)
		e := accessLines(t, m)[before]
		if e.Flags != FlagTimeout || e.Route != "shop/web#6" {
			t.Errorf("access log %+v, want flag %s and route shop/web#6", e, FlagTimeout)
		}
	})
}

// A set of routes using what the waypoint does not implement is refused
// whole, each problem named.
func TestHTTPRoutesRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}}}]
    backendRefs: [{name: web, namespace: other, port: 80}, {name: web}]
    timeouts: {request: soon}
  - matches: [{path: {type: RegularExpression, value: "(["}}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	routes, err := ReadHTTPRoutes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = NewRoutes(routes, "cluster.local")
	for _, want := range []string{
		"HTTPRoute shop/bad: spec.rules[0].filters[0]: filter type RequestMirror is not supported by the waypoint yet",
		"spec.rules[0].timeouts.request: \"soon\" is not a duration",
		"spec.rules[0].backendRefs[0]: backend other/web is in another namespace: ReferenceGrants are not supported yet",
		"spec.rules[0].backendRefs[1]: backend web: port is required for a Service",
		"spec.rules[1].matches[0]: path: regular expression \"([\"",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewRoutes error %v, want it to say %q", err, want)
		}
	}

	write(t, path, "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: typo, namespace: shop}\nspec: {parentRef: []}\n")
	if _, err := ReadHTTPRoutes([]string{path}); err == nil || !strings.Contains(err.Error(), `routes.yaml:1: document 0: HTTPRoute: json: unknown field "parentRef"`) {
		t.Errorf("ReadHTTPRoutes: %v, want the unknown field named with the file", err)
	}
}
