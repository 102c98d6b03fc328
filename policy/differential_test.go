package policy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The native program must answer exactly what topdown answers for
// data.mesh.authz.decision. These tests generate random policy packages in
// (and just outside) the fragment the lowering covers, and random inputs
// drawn from the same small value pools so rules match often, then compare
// whole decisions. Each run takes fixed seeds and fresh random ones; a
// failure prints its seed, and -differential.seed replays it.

var (
	poolNS      = []string{"a", "b", "shop", "kube-system"}
	poolSA      = []string{"web", "api", "db", "default"}
	poolIP      = []string{"10.0.0.1", "10.0.1.7", "192.168.3.4", "::ffff:10.0.0.9", "2001:db8::1"}
	poolPorts   = []int{0, 80, 443, 5432, 8080}
	poolLabels  = []string{"web", "api", "postgres"}
	poolMethods = []string{"GET", "POST", "DELETE"}
	poolPaths   = []string{"/", "/admin", "/admin/users", "/api/v1/items?x=1", "/a/../admin", "/%61dmin"}
	poolHosts   = []string{"web.b", "API.shop", "db"}
)

func pick[T any](r *rand.Rand, pool []T) T { return pool[r.IntN(len(pool))] }

// genCondition returns one Rego condition; unsupported ones force the
// package through the topdown fallback, which must agree too.
func genCondition(r *rand.Rand, owner string, n int) string {
	if r.IntN(3) == 0 {
		return genWiderCondition(r, owner, n)
	}
	switch r.IntN(24) {
	case 0:
		return fmt.Sprintf("input.source.namespace == %q", pick(r, poolNS))
	case 1:
		return fmt.Sprintf("input.source.namespace in {%q, %q}", pick(r, poolNS), pick(r, poolNS))
	case 2:
		return fmt.Sprintf("input.source.principal == %q", principal(pick(r, poolNS), pick(r, poolSA)))
	case 3:
		return fmt.Sprintf("startswith(input.source.principal, %q)", "spiffe://td/ns/"+pick(r, poolNS)+"/")
	case 4:
		return fmt.Sprintf("not endswith(input.source.principal, %q)", "/sa/"+pick(r, poolSA))
	case 5:
		return fmt.Sprintf("net.cidr_contains(%q, input.source.ip)", pick(r, []string{"10.0.0.0/24", "10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"}))
	case 6:
		return fmt.Sprintf("input.destination.port == %d", pick(r, poolPorts))
	case 7:
		return fmt.Sprintf("input.destination.port >= %d", pick(r, poolPorts))
	case 8:
		return fmt.Sprintf("input.destination.labels.app == %q", pick(r, poolLabels))
	case 9:
		return fmt.Sprintf("not input.destination.labels.app == %q", pick(r, poolLabels))
	case 10:
		return fmt.Sprintf("input.destination.namespace != %q", pick(r, poolNS))
	case 11:
		return "input.connection.mtls"
	case 12:
		return "not input.connection.mtls"
	case 13:
		return "applies"
	case 14:
		return "not applies"
	case 15:
		return fmt.Sprintf("input.request.method == %q", pick(r, poolMethods))
	case 16:
		return fmt.Sprintf("startswith(input.request.url_path, %q)", pick(r, []string{"/admin", "/api/"}))
	case 17:
		return fmt.Sprintf("lower(input.request.host) == %q", strings.ToLower(pick(r, poolHosts)))
	case 18:
		return fmt.Sprintf("input.request.headers[%q] == %q", "x-team", pick(r, []string{"red", "blue"}))
	case 19:
		return fmt.Sprintf("%q in input.request.auth.audiences", pick(r, []string{"aud1", "aud2"}))
	case 20:
		switch r.IntN(6) {
		case 0:
			return fmt.Sprintf("input.request.auth.claims.groups[_] == %q", "admins")
		case 1:
			return fmt.Sprintf("some g_ in input.request.auth.claims.groups\n\tg_ == %q", pick(r, []string{"admins", "devs"}))
		case 2:
			return fmt.Sprintf("some a_ in input.request.auth.audiences\n\tstartswith(a_, %q)\n\tnot a_ == %q", "aud", "aud2")
		case 3:
			return fmt.Sprintf("some v_ in input.destination.labels\n\tendswith(v_, %q)", pick(r, []string{"b", "res"}))
		case 4:
			return "some k_, v_ in input.destination.labels\n\tk_ == \"app\"\n\tv_ != \"web\"" // key used: topdown
		}
		return fmt.Sprintf("some h_ in input.request.headers\n\th_ in {%q, %q}", "red", "green")
	case 21:
		return fmt.Sprintf("regex.match(%q, input.destination.workload)", "^web-[0-9]+$")
	case 22:
		if r.IntN(2) == 0 {
			return fmt.Sprintf("net.cidr_contains(%q, input.source.remote_ip)", "192.168.0.0/16")
		}
		return fmt.Sprintf("input.source.port > %d", 40000)
	}
	return fmt.Sprintf("x_ := input.source.service_account\n\tx_ == %q", pick(r, poolSA))
}

// localVars are the variables conditions declare (x_, g_, ...): each
// condition of a body gets its own, renamed x_0, g_1, ...
var localVars = regexp.MustCompile(`\b([a-z])_\b`)

func principal(ns, sa string) string { return "spiffe://td/ns/" + ns + "/sa/" + sa }

func genPackage(r *rand.Rand, owner string, n int) string {
	var b strings.Builder
	name := fmt.Sprintf("p%d", n)
	fmt.Fprintf(&b, "package mesh.policies.%s.%s\n\n", owner, name)
	fmt.Fprintf(&b, "applies if input.destination.namespace == %q\n", pick(r, poolNS))
	fmt.Fprintf(&b, "applies if input.destination.service_account == %q\n\n", pick(r, poolSA))
	if r.IntN(3) == 0 {
		b.WriteString("default applies := false\n\n")
	}
	b.WriteString(genHelpers(r, owner))
	id := owner + "/" + name
	booleanForm := r.IntN(8) == 0 // `deny if ...`: one entry for the package
	for i := range 1 + r.IntN(4) {
		point := pick(r, []string{"deny", "deny", "allow", "allow", "custom_deny", "audit"})
		extra := ""
		switch r.IntN(12) {
		case 0, 1:
			extra = `, "dry_run": true`
		case 2:
			extra = `, "dry_run": "false"` // not true: enforced
		}
		if r.IntN(4) == 0 {
			extra += fmt.Sprintf(`, "reason": "rule %d says no"`, i)
		}
		switch {
		case booleanForm:
			fmt.Fprintf(&b, "%s if {\n", point)
		case r.IntN(14) == 0:
			fmt.Fprintf(&b, "%s contains \"not an object %d\" if {\n", point, i)
		default:
			fmt.Fprintf(&b, "%s contains {\"policy\": %q, \"rule\": %d%s} if {\n", point, id, i, extra)
		}
		for c := range 1 + r.IntN(3) {
			fmt.Fprintf(&b, "\t%s\n", localVars.ReplaceAllString(genCondition(r, owner, n), fmt.Sprintf("${1}_%d", c)))
		}
		b.WriteString("}\n\n")
		if point == "allow" {
			fmt.Fprintf(&b, "allow_scope contains {\"policy\": %q%s} if applies\n\n", id, extra)
		}
	}
	return b.String()
}

func genInput(r *rand.Rand) Input {
	in := Input{Layer: L4}
	if r.IntN(5) > 0 {
		ns, sa := pick(r, poolNS), pick(r, poolSA)
		in.Source = Source{Principal: principal(ns, sa), TrustDomain: "td", Namespace: ns, ServiceAccount: sa}
		in.Connection.MTLS = true
	}
	in.Source.IP = pick(r, poolIP)
	if r.IntN(3) == 0 {
		in.Source.RemoteIP = pick(r, poolIP)
	}
	in.Source.Port = 30000 + r.IntN(20000)
	in.Destination = Destination{
		IP: pick(r, poolIP), Port: pick(r, poolPorts), Namespace: pick(r, poolNS),
		Workload: pick(r, []string{"web-1", "api-7", "db"}), ServiceAccount: pick(r, poolSA),
	}
	if r.IntN(4) > 0 {
		in.Destination.Labels = map[string]string{"app": pick(r, poolLabels)}
	}
	if r.IntN(2) == 0 {
		in.Layer = L7
		in.Request = &Request{Method: pick(r, poolMethods), Path: pick(r, poolPaths), Host: pick(r, poolHosts)}
		if r.IntN(2) == 0 {
			in.Request.Path = genPath(r)
		}
		if r.IntN(2) == 0 {
			in.Request.Headers = genHeaders(r)
		}
		if r.IntN(2) == 0 {
			in.Request.Auth = &Auth{Principal: "iss/sub", Audiences: []string{pick(r, []string{"aud1", "aud2"})},
				Claims: genClaims(r)}
		}
	}
	return in
}

func writeBundle(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	for name, src := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func loadEngine(t testing.TB, cfg Config, dirs ...string) *Engine {
	t.Helper()
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var bundles []*Bundle
	for _, d := range dirs {
		b, err := ReadBundle(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, b)
	}
	if err := e.Load(context.Background(), bundles...); err != nil {
		t.Fatal(err)
	}
	return e
}

var differentialSeed = flag.String("differential.seed", "", "TestNativeAgreesWithTopdown: run only this seed (as a failure prints it)")

// differentialStats counts what the generator exercised, so a generator
// that stops reaching a case fails the test instead of going quiet.
type differentialStats struct {
	allowed, denied, refused, nativePkgs, topdownPkgs, multiOwner int
}

func (s *differentialStats) add(o differentialStats) {
	s.allowed += o.allowed
	s.denied += o.denied
	s.refused += o.refused
	s.nativePkgs += o.nativePkgs
	s.topdownPkgs += o.topdownPkgs
	s.multiOwner += o.multiOwner
}

func TestNativeAgreesWithTopdown(t *testing.T) {
	fixed, random := 60, 20
	if testing.Short() || raceEnabled {
		fixed, random = 16, 6
	}
	var seeds []uint64
	for seed := range fixed {
		seeds = append(seeds, uint64(seed))
	}
	for range random {
		seeds = append(seeds, rand.Uint64())
	}
	if *differentialSeed != "" {
		seed, err := strconv.ParseUint(*differentialSeed, 10, 64)
		if err != nil {
			t.Fatalf("-differential.seed: %v", err)
		}
		seeds, fixed = []uint64{seed}, 0
	}
	// Seeds are independent: each is a subtest, run side by side, and
	// adds its counts to st when it is done.
	var (
		mu sync.Mutex
		st differentialStats
	)
	t.Run("seeds", func(t *testing.T) {
		for i, seed := range seeds {
			kind := "fixed"
			if i >= fixed {
				kind = "random"
			}
			t.Run(fmt.Sprintf("%s-%d", kind, seed), func(t *testing.T) {
				t.Parallel()
				var own differentialStats
				if !agreeOnSeed(t, seed, &own) {
					t.Logf("seed %d (%s); replay: go test ./policy -run '^TestNativeAgreesWithTopdown$' -differential.seed %d", seed, kind, seed)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				st.add(own)
			})
		}
	})
	if t.Failed() {
		return
	}
	t.Logf("%d seeds: decisions %d allow, %d deny, %d refused inputs; packages %d native, %d topdown; %d sets of several bundles",
		len(seeds), st.allowed, st.denied, st.refused, st.nativePkgs, st.topdownPkgs, st.multiOwner)
	if len(seeds) > 1 && (st.allowed < 100 || st.denied < 100 || st.refused < 20 || st.nativePkgs < 10 || st.topdownPkgs < 10 || st.multiOwner < 3) {
		t.Errorf("the generator no longer exercises both outcomes, refusals, both evaluators and several bundles")
	}
}

// diffOwners are the bundles a seed may load together, one owner each.
var diffOwners = []string{"gen", "team", "edge"}

// agreeOnSeed generates one bundle set and 200 inputs from seed and
// compares the native program, its cache and topdown on each.
func agreeOnSeed(t *testing.T, seed uint64, st *differentialStats) bool {
	t.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, 7))
	owners := diffOwners[:1+r.IntN(len(diffOwners))]
	if len(owners) > 1 {
		st.multiOwner++
	}
	var dirs []string
	all := map[string]string{}
	for _, owner := range owners {
		files := genBundle(r, owner)
		dirs = append(dirs, writeBundle(t, t.TempDir(), files))
		for name, src := range files {
			all[owner+"/"+name] = src
		}
	}
	native := loadEngine(t, Config{}, dirs...)
	reference := loadEngine(t, Config{Topdown: true, CacheSize: -1}, dirs...)
	prog := native.current.Load().prog
	if prog == nil {
		t.Errorf("seed %d: no native program", seed)
		return false
	}
	pkgs := 0
	for _, src := range all {
		if strings.HasPrefix(src, "package ") {
			pkgs++
		}
	}
	st.topdownPkgs += len(prog.notes)
	st.nativePkgs += pkgs - len(prog.notes)
	for i := range 200 {
		in := genInput(r)
		if r.IntN(10) == 0 {
			in = genInvalid(r, in)
		}
		want, werr := reference.Decide(ctx, in)
		got, gerr := native.Decide(ctx, in)
		again, aerr := native.Decide(ctx, in) // through the cache for L4
		if !sameError(werr, gerr) || !sameError(werr, aerr) {
			t.Errorf("seed %d input %d: errors differ\ninput: %+v\ntopdown: %v\nnative:  %v\ncached:  %v", seed, i, in, werr, gerr, aerr)
			return false
		}
		if !reflect.DeepEqual(want, got) || !reflect.DeepEqual(want, again) {
			t.Errorf("seed %d input %d disagree\ninput: %+v\nrequest: %+v\ntopdown: %+v\nnative:  %+v\ncached:  %+v\npolicies:\n%s",
				seed, i, in, in.Request, want, got, again, joinFiles(all))
			return false
		}
		if in.Request != nil && !agreeAsHTTPHeader(t, seed, i, native, reference, in, want, werr) {
			return false
		}
		switch {
		case werr != nil:
			if !errors.Is(werr, ErrInvalidInput) {
				t.Errorf("seed %d input %d: both refuse, but not as invalid input: %v", seed, i, werr)
				return false
			}
			st.refused++
		case want.Allow:
			st.allowed++
		default:
			st.denied++
		}
	}
	return true
}

// agreeAsHTTPHeader decides in again with its headers given as
// Request.HTTPHeader, as a waypoint gives them: under canonical names as
// net/http holds them (read by name, natively, and through JSON by
// topdown), and under the names as generated (not canonical: Prepare
// builds the document from them). Each must answer want.
func agreeAsHTTPHeader(t *testing.T, seed uint64, i int, native, reference *Engine, in Input, want Decision, werr error) bool {
	t.Helper()
	canonical, raw := http.Header{}, http.Header{}
	for _, name := range slices.Sorted(maps.Keys(in.Request.Headers)) {
		v := in.Request.Headers[name]
		canonical[http.CanonicalHeaderKey(name)] = append(canonical[http.CanonicalHeaderKey(name)], v)
		raw[name] = []string{v}
	}
	for _, c := range []struct {
		form string
		h    http.Header
		e    *Engine
	}{{"canonical", canonical, native}, {"canonical", canonical, reference}, {"as generated", raw, native}} {
		req := *in.Request
		req.Headers, req.HTTPHeader = nil, c.h
		as := in
		as.Request = &req
		got, err := c.e.Decide(context.Background(), as)
		if !sameError(werr, err) || !reflect.DeepEqual(want, got) {
			t.Errorf("seed %d input %d: with the headers as an http.Header (%s names), topdown %v: %+v (%v), want %+v (%v)\nheaders: %v",
				seed, i, c.form, c.e.cfg.Topdown, got, err, want, werr, c.h)
			return false
		}
	}
	return true
}

// sameError: both nil, or both failing with the same message.
func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Error() == b.Error()
}

// genBundle is one owner's bundle: packages under mesh/policies/<owner>,
// and base documents under meshdata/<owner> that policies reference.
func genBundle(r *rand.Rand, owner string) map[string]string {
	files := map[string]string{
		".manifest": fmt.Sprintf(`{"revision": "gen", "roots": ["mesh/policies/%s", "meshdata/%s"]}`, owner, owner),
		fmt.Sprintf("meshdata/%s/data.json", owner): fmt.Sprintf(`{"namespaces": [%q, %q], "ports": [%d, %d], "app": %q, "limits": {"max_port": %d}}`,
			pick(r, poolNS), pick(r, poolNS), pick(r, poolPorts), pick(r, poolPorts), pick(r, poolLabels), pick(r, poolPorts)),
	}
	for n := range 1 + r.IntN(5) {
		files[fmt.Sprintf("p%d.rego", n)] = genPackage(r, owner, n)
	}
	return files
}

// genHelpers are rules every package defines for conditions to use: a
// function with arguments, a value with else and a default, and a boolean
// over bundle data.
func genHelpers(r *rand.Rand, owner string) string {
	return fmt.Sprintf(`ns_is(x) if input.source.namespace == x

has_prefix(s, p) if startswith(s, p)

default level := "none"

level := "high" if {
	input.source.namespace == %q
} else := "low" if {
	input.destination.port == %d
}

default port_ok := false

port_ok if input.destination.port in data.meshdata.%s.ports

`, pick(r, poolNS), pick(r, poolPorts), owner)
}

// genWiderCondition: iteration with every, else and default, functions
// with arguments, comprehensions, data references, operands of the wrong
// type, and normalized paths and headers.
func genWiderCondition(r *rand.Rand, owner string, n int) string {
	data := "data.meshdata." + owner
	switch r.IntN(22) {
	case 0:
		return fmt.Sprintf("ns_is(%q)", pick(r, poolNS))
	case 1:
		return fmt.Sprintf("has_prefix(input.source.principal, %q)", "spiffe://td/ns/"+pick(r, poolNS)+"/")
	case 2:
		return fmt.Sprintf("level == %q", pick(r, []string{"high", "low", "none"}))
	case 3:
		return pick(r, []string{"port_ok", "not port_ok"})
	case 4:
		return "every a in input.request.auth.audiences {\n\t\tstartswith(a, \"aud\")\n\t}"
	case 5:
		return fmt.Sprintf("every h in input.request.headers {\n\t\th != %q\n\t}", pick(r, []string{"red", "blue"}))
	case 6:
		return fmt.Sprintf("count([g | some g in input.request.auth.claims.groups; g == %q]) > 0", pick(r, []string{"admins", "devs"}))
	case 7:
		return fmt.Sprintf("%q in {v | some v in input.request.headers}", pick(r, []string{"red", "blue"}))
	case 8:
		return fmt.Sprintf("input.source.namespace in %s.namespaces", data)
	case 9:
		return fmt.Sprintf("%s.ports[_] == input.destination.port", data)
	case 10:
		return fmt.Sprintf("input.destination.port < %s.limits.max_port", data)
	case 11:
		return fmt.Sprintf("input.destination.labels.app == %s.app", data)
	case 12:
		if n > 0 {
			return fmt.Sprintf("data.mesh.policies.%s.p0.applies", owner)
		}
		return fmt.Sprintf("not data.mesh.policies.%s.p1.applies", owner)
	case 13:
		return pick(r, []string{`input.destination.port == "80"`, `input.connection.mtls == "true"`, `input.destination.labels.app == 5`})
	case 14:
		return pick(r, []string{`startswith(input.destination.port, "8")`, `lower(input.destination.port) == "80"`, `net.cidr_contains("10.0.0.0/8", input.destination.port)`})
	case 15:
		return pick(r, []string{`input.request.auth.claims.groups == "admins"`, `input.request.auth.claims.level > 3`,
			`input.request.auth.claims.level == "3"`, `"read" in input.request.auth.claims.scope`, `input.request.auth.claims.org.team == "red"`})
	case 16:
		return fmt.Sprintf("input.request.url_path == %q", pick(r, []string{"/admin", "/api/v1/items", "/", "/a/b", "/x%2Fy", "/x%2fy", "/~u"}))
	case 17:
		return fmt.Sprintf("startswith(input.request.url_path, %q)", pick(r, []string{"/admin/", "/a", "/api", "/%2e"}))
	case 18:
		return fmt.Sprintf("input.request.headers[%q] == %q", pick(r, []string{"x-team", "x-tenant", "X-Team"}), pick(r, []string{"red", "blue", "t-1"}))
	case 19:
		return fmt.Sprintf("endswith(input.request.path, %q)", pick(r, []string{"?x=1", "/", "admin"}))
	case 20:
		return fmt.Sprintf("input.request.headers[%q]", pick(r, []string{"x-team", "x-forwarded-for"}))
	}
	return "not input.request.headers[\"x-tenant\"] == \"t-1\""
}

// genPath is a request path drawn from segments that exercise the
// normalization both evaluators read (url_path): escapes of unreserved and
// reserved characters in either case, dot segments, backslashes, queries
// and fragments.
func genPath(r *rand.Rand) string {
	segs := []string{"a", "admin", "api", "v1", "b", "..", ".", "%2e%2e", "%2E", "%2F", "%2f", "%61dmin", "%7E", "~u", "x%41", "", "x%2Fy"}
	var b strings.Builder
	for range 1 + r.IntN(4) {
		b.WriteString(pick(r, []string{"/", "/", "/", `\`}))
		b.WriteString(pick(r, segs))
	}
	b.WriteString(pick(r, []string{"", "", "?x=1", "#f", "?a=/admin", "/"}))
	return b.String()
}

// genHeaders has names in any case (Prepare lower-cases them).
func genHeaders(r *rand.Rand) map[string]string {
	h := map[string]string{}
	for range 1 + r.IntN(3) {
		h[pick(r, []string{"X-Team", "x-team", "X-TEAM", "x-tenant", "X-Tenant", "x-forwarded-for"})] = pick(r, []string{"red", "blue", "green", "t-1", ""})
	}
	return h
}

// genClaims gives claims of the types policies expect, and of others.
func genClaims(r *rand.Rand) map[string]any {
	c := map[string]any{}
	switch r.IntN(5) {
	case 0:
		c["groups"] = []any{pick(r, []string{"admins", "devs"})}
	case 1:
		c["groups"] = "admins"
	case 2:
		c["groups"] = 3.0
	case 3:
		c["groups"] = []any{"devs", 7.0, nil, map[string]any{"x": "admins"}}
	}
	switch r.IntN(4) {
	case 0:
		c["level"] = 5.0
	case 1:
		c["level"] = "3"
	case 2:
		c["level"] = true
	}
	if r.IntN(2) == 0 {
		c["scope"] = pick(r, []string{"read write", "read", " ", "write  read"})
	}
	if r.IntN(3) == 0 {
		c["org"] = map[string]any{"team": pick(r, []any{"red", 1.0, []any{"red"}})}
	}
	return c
}

// genInvalid breaks a valid input in one of the ways Prepare refuses.
func genInvalid(r *rand.Rand, in Input) Input {
	switch r.IntN(10) {
	case 0:
		in.Source.IP = "10.0.0.300"
	case 1:
		in.Destination.Port = 70000
	case 2:
		in.Source.Port = -1
	case 3:
		in.Layer = Layer(pick(r, []string{"", "l5", "L4"}))
	case 4:
		in.Layer, in.Request = L7, nil
	case 5:
		in.Layer, in.Request = L4, &Request{Method: "GET", Path: "/"}
	case 6:
		in.Source.Principal = "td/ns/a/sa/web"
	case 7:
		in.Source = Source{Principal: principal("a", "web"), Namespace: "b", IP: in.Source.IP}
	case 8:
		in.Source = Source{Namespace: "a", IP: in.Source.IP}
	default:
		in.Source.RemoteIP = "not-an-ip"
	}
	return in
}

func joinFiles(files map[string]string) string {
	var b strings.Builder
	for name, src := range files {
		fmt.Fprintf(&b, "--- %s\n%s\n", name, src)
	}
	return b.String()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
