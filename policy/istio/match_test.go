package istio

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	meshrego "github.com/regomesh/regomesh/rego"
)

// The translator writes matchers inline; the library offers the same
// matching to hand-written Rego. These tests hold the two to one meaning.

func TestRequestPrincipalsAgreeWithLibrary(t *testing.T) {
	patterns := []string{
		"*", "https://issuer.example/alice", "https://issuer.exa*", "foo/bar*", "foo/*", "foo*",
		"*foo", "*/alice", "*bar/foo", "foo", "/*", "*/", "a.b/c+d*", "**", "*x*",
	}
	principals := []string{
		"https://issuer.example/alice", "https://issuer.example", "https://issuer.example/",
		"foo/bar", "foo/barbaz", "foo/bar/baz", "foobar/x", "foo/", "iss/xfoo", "/alice",
		"https://bar/foo", "x/y", "a.b/c+dz", "aXb/c+dz", "iss/x*", "nosubject",
	}
	lib := library(t)
	matched, tried := 0, 0
	defer func() {
		if matched == 0 || matched == tried {
			t.Errorf("%d of %d pairs match: the table does not tell matching from not matching", matched, tried)
		}
	}()
	for _, pattern := range patterns {
		alts := requestPrincipalAlts([]string{pattern})
		for _, principal := range principals {
			input := map[string]any{"request": map[string]any{"auth": map[string]any{"principal": principal}}}
			got := evalAlts(t, alts, input)
			matched += bool2int(got)
			tried++
			want := holds(t, lib, fmt.Sprintf("data.mesh.authz.request_principal_match(%s, %s)", quote(pattern), quote(principal)), nil)
			if got != want {
				t.Errorf("requestPrincipals %q, principal %q: translation %v, library %v (%q)", pattern, principal, got, want, alts)
			}
		}
	}
}

func TestWaypointNamespacesAgreeWithLibrary(t *testing.T) {
	patterns := []string{"*", "shop", "a*c", "*a", "team-*-prod", "ns.*.prod", "sh*"}
	principals := map[string]string{ // principal: the namespace the engine derives
		"spiffe://td/ns/abc/sa/x":           "abc",
		"spiffe://td/ns/shop/sa/frontend":   "shop",
		"spiffe://td/ns/team-a-prod/sa/x":   "team-a-prod",
		"spiffe://td/ns/ns.any.prod/sa/x":   "ns.any.prod",
		"spiffe://td/ns/nsXanyXprod/sa/x":   "nsXanyXprod",
		"spiffe://td/ns/abd/sa/c":           "abd",
		"spiffe://td/ns/shopping/sa/team-a": "shopping",
	}
	lib := library(t)
	matched, tried := 0, 0
	defer func() {
		if matched == 0 || matched == tried {
			t.Errorf("%d of %d pairs match: the table does not tell matching from not matching", matched, tried)
		}
	}()
	for _, pattern := range patterns {
		alts := namespaceAlts([]string{pattern}, true)
		for principal, ns := range principals {
			input := map[string]any{"source": map[string]any{"principal": principal, "namespace": ns}}
			got := evalAlts(t, alts, input)
			matched += bool2int(got)
			tried++
			want := holds(t, lib, fmt.Sprintf("data.mesh.authz.waypoint_namespace_match(%s, %s)", quote(pattern), quote(principal)), nil)
			if got != want {
				t.Errorf("namespaces %q, principal %q: translation %v, library %v (%q)", pattern, principal, got, want, alts)
			}
		}
	}
}

func library(t *testing.T) []func(*rego.Rego) {
	t.Helper()
	modules, err := meshrego.Modules()
	if err != nil {
		t.Fatal(err)
	}
	var opts []func(*rego.Rego)
	for _, m := range modules {
		opts = append(opts, rego.ParsedModule(m))
	}
	return opts
}

// evalAlts says whether some alternative of alts holds for input.
func evalAlts(t *testing.T, alts disj, input map[string]any) bool {
	t.Helper()
	for _, c := range alts {
		if holds(t, nil, strings.Join(c, "; "), input) {
			return true
		}
	}
	return false
}

// holds says whether query has a result in which no expression is false
// (a query of one call that returns false has a result: false).
func holds(t *testing.T, lib []func(*rego.Rego), query string, input map[string]any) bool {
	t.Helper()
	opts := append([]func(*rego.Rego){rego.Query(query), rego.Input(input), rego.SetRegoVersion(ast.RegoV1)}, lib...)
	rs, err := rego.New(opts...).Eval(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	for _, r := range rs {
		if !slices.ContainsFunc(r.Expressions, func(e *rego.ExpressionValue) bool { return e.Value == false }) {
			return true
		}
	}
	return false
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestPathsAgreeWithLibrary runs the rows of Istio's path templating
// integration test (tests/integration/security/authz_test.go,
// TestAuthz_PathTemplating) and a few of our own through the translation
// and the library's path_match, which must agree with each other and
// with Istio.
func TestPathsAgreeWithLibrary(t *testing.T) {
	patterns := []string{"/allow/admin/{**}", "/foo/{*}/bar/{**}", "/store/{**}/cart"}
	rows := []struct {
		path  string
		allow bool
	}{
		{"/allow/admin/", true},
		{"/allow/admin", false},
		{"/allow/user/", false},
		{"/allow", false},
		{"/allow/admin/temp", true},
		{"/allow/admin/temp.txt", true},
		{"/allow/admin/foo/temp.txt", true},
		{"/foo/buzz/bar/bat.txt", true},
		{"/foo/buzz/bar/bat.temp.txt", true},
		{"/foo/buzz/bar/bat/fuzz.txt", true},
		{"/foo/bar/bat.txt", false},
		{"/foo//bar/bat.txt", false},
		{"/foo/buzz/bar/bat", true},
		{"/store//cart", true},
		{"/store/cart", false},
		{"/store/foo/cart", true},
		{"/store/foo/bar/cart", true},
		{"/foo/a*b/bar/x", false},
		{"/store/a b/cart", false},
	}
	lib := library(t)
	alts := pathAlts(patterns)
	for _, r := range rows {
		input := map[string]any{"request": map[string]any{"url_path": r.path}}
		got := evalAlts(t, alts, input)
		want := false
		for _, p := range patterns {
			want = want || holds(t, lib, fmt.Sprintf("data.mesh.authz.path_match(%s, %s)", quote(p), quote(r.path)), nil)
		}
		if got != r.allow || want != r.allow {
			t.Errorf("path %q: translation %v, library %v, Istio %v", r.path, got, want, r.allow)
		}
	}
}
