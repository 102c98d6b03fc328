package waypoint

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/policy/istio"
)

// FuzzFindTokens feeds arbitrary headers and query strings to token
// extraction and validation: every token found came from a place a rule
// looks, and validation answers with a token or one of Envoy's reasons,
// never a panic.
func FuzzFindTokens(f *testing.F) {
	f.Add("Bearer a.b.c", "x", "access_token=a.b.c&tok=1")
	f.Add("bearer   eyJhbGciOiJub25lIn0.eyJpc3MiOiJhIn0.", "Token abc", "tok=%zz")
	f.Add("", "", "access_token=")
	f.Fuzz(func(t *testing.T, authorization, custom, rawQuery string) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{RawQuery: rawQuery}}
		r.Header.Set("Authorization", authorization)
		r.Header.Set("X-Custom", custom)
		rules := []istio.JWTRule{
			{Issuer: "a"},
			{Issuer: "b", FromHeaders: []istio.JWTHeader{{Name: "x-custom", Prefix: "Token "}}, FromParams: []string{"tok"}},
		}
		for _, tok := range findTokens(r, rules) {
			if !slicesContainsRule(rules, tok) {
				t.Fatalf("token %+v found where no rule looks", tok)
			}
		}
		a := &Authn{keys: NewKeySets(KeySetsConfig{}), now: time.Now}
		defer a.keys.Close()
		for _, tok := range findTokens(r, rules) {
			auth, err := a.validate(r, tok, rules)
			if (auth == nil) == (err == nil) {
				t.Fatalf("validate(%q) = %v, %v: want exactly one", tok.raw, auth, err)
			}
		}
	})
}

func slicesContainsRule(rules []istio.JWTRule, t token) bool {
	for _, r := range rules {
		if looksAt(r, t) {
			return true
		}
	}
	return false
}

// FuzzRouteMatch matches arbitrary requests against compiled routes:
// a match is always one of the service's rules and respects its path
// kind; never a panic.
func FuzzRouteMatch(f *testing.F) {
	f.Add("/v2/a", "GET", "canary", "a=1")
	f.Add("/public//x/../y", "POST", "", "x=%zz")
	f.Add("", "", "\x00", "")
	res, err := decodeRoutes([]byte(testRoutes), "routes.yaml")
	if err != nil {
		f.Fatal(err)
	}
	rs, _, err := NewRoutes(res.HTTPRoutes, "cluster.local")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path, method, env, rawQuery string) {
		r := &http.Request{Method: method, Header: http.Header{}, URL: &url.URL{Path: path, RawQuery: rawQuery}}
		r.Header.Set("X-Env", env)
		m, attached := rs.match("web.shop.svc.cluster.local", 80, r)
		if !attached {
			t.Fatal("the web service has routes attached on port 80")
		}
		if m == nil {
			return
		}
		switch m.pathType {
		case "Exact":
			if path != m.path {
				t.Fatalf("Exact %q matched %q", m.path, path)
			}
		case "PathPrefix":
			if !strings.HasPrefix(path, strings.TrimSuffix(m.path, "/")) {
				t.Fatalf("PathPrefix %q matched %q", m.path, path)
			}
		}
	})
}

// FuzzVirtualServiceMatch matches arbitrary requests against compiled
// VirtualServices: a match is the first of the service's rules whose
// conditions the request meets, and respects its uri kind; never a
// panic.
func FuzzVirtualServiceMatch(f *testing.F) {
	f.Add("/a/exact", "GET", "canary", "", "v=12")
	f.Add("/r/12", "POST", "", "1", "")
	f.Add("/W", "", "\x00", "", "v=%zz&v=1")
	res, err := decodeRoutes([]byte(testVirtualServices), "vs.yaml")
	if err != nil {
		f.Fatal(err)
	}
	rs, _, err := NewRouteSet(res, "cluster.local")
	if err != nil {
		f.Fatal(err)
	}
	const host = "web2.shop.svc.cluster.local"
	f.Fuzz(func(t *testing.T, path, method, env, keep, rawQuery string) {
		r := &http.Request{Method: method, Header: http.Header{}, URL: &url.URL{Path: path, RawQuery: rawQuery}}
		r.Header.Set("X-Env", env)
		if keep != "" {
			r.Header.Set("X-Keep", keep)
		}
		m, attached := rs.match(host, 80, r)
		if !attached {
			t.Fatal("web2 has VirtualService rules on port 80")
		}
		if m == nil {
			return
		}
		for _, earlier := range rs.virtual[host] {
			if earlier == m {
				break
			}
			if earlier.matches(r, r.URL.Query()) {
				t.Fatalf("rule %s matched, but the earlier %s matches too", m.rule.name(), earlier.rule.name())
			}
		}
		switch m.pathType {
		case "Exact":
			if path != m.path {
				t.Fatalf("exact %q matched %q", m.path, path)
			}
		case "Prefix":
			if !strings.HasPrefix(path, m.path) {
				t.Fatalf("prefix %q matched %q", m.path, path)
			}
		case "RegularExpression":
			if !m.pathRE.MatchString(path) {
				t.Fatalf("regex %q matched %q", m.path, path)
			}
		}
		if m.method != nil && !m.method.matches(method, true) {
			t.Fatalf("method %q matched %q", m.method.value, method)
		}
	})
}

// FuzzDecodeRoutes feeds arbitrary files to the route loader: it reads or
// refuses them, and what it reads compiles or is refused, never a panic.
func FuzzDecodeRoutes(f *testing.F) {
	f.Add([]byte(testVirtualServices))
	f.Add([]byte(testRoutes))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {http: [{match: [{headers: {a: {}}}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := decodeRoutes(data, "fuzz.yaml")
		if err != nil {
			return
		}
		if rs, _, err := NewRouteSet(res, "cluster.local"); (rs == nil) == (err == nil) {
			t.Fatalf("NewRouteSet = %v, %v: want exactly one", rs, err)
		}
	})
}
