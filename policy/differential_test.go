package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The native program must answer exactly what topdown answers for
// data.mesh.authz.decision. These tests generate random policy packages in
// (and just outside) the fragment the lowering covers, and random inputs
// drawn from the same small value pools so rules match often, then compare
// whole decisions.

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
func genCondition(r *rand.Rand) string {
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
			return fmt.Sprintf("some g in input.request.auth.claims.groups\n\tg == %q", pick(r, []string{"admins", "devs"}))
		case 2:
			return fmt.Sprintf("some a in input.request.auth.audiences\n\tstartswith(a, %q)\n\tnot a == %q", "aud", "aud2")
		case 3:
			return fmt.Sprintf("some v in input.destination.labels\n\tendswith(v, %q)", pick(r, []string{"b", "res"}))
		case 4:
			return "some k, v in input.destination.labels\n\tk == \"app\"\n\tv != \"web\"" // key used: topdown
		}
		return fmt.Sprintf("some h in input.request.headers\n\th in {%q, %q}", "red", "green")
	case 21:
		return fmt.Sprintf("regex.match(%q, input.destination.workload)", "^web-[0-9]+$")
	case 22:
		if r.IntN(2) == 0 {
			return fmt.Sprintf("net.cidr_contains(%q, input.source.remote_ip)", "192.168.0.0/16")
		}
		return fmt.Sprintf("input.source.port > %d", 40000)
	}
	return fmt.Sprintf("x := input.source.service_account\n\tx == %q", pick(r, poolSA))
}

func principal(ns, sa string) string { return "spiffe://td/ns/" + ns + "/sa/" + sa }

func genPackage(r *rand.Rand, owner string, n int) string {
	var b strings.Builder
	name := fmt.Sprintf("p%d", n)
	fmt.Fprintf(&b, "package mesh.policies.%s.%s\n\n", owner, name)
	fmt.Fprintf(&b, "applies if input.destination.namespace == %q\n", pick(r, poolNS))
	fmt.Fprintf(&b, "applies if input.destination.service_account == %q\n\n", pick(r, poolSA))
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
		for range 1 + r.IntN(3) {
			fmt.Fprintf(&b, "\t%s\n", genCondition(r))
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
			in.Request.Headers = map[string]string{"X-Team": pick(r, []string{"red", "blue"})}
		}
		if r.IntN(2) == 0 {
			in.Request.Auth = &Auth{Principal: "iss/sub", Audiences: []string{pick(r, []string{"aud1", "aud2"})},
				Claims: map[string]any{"groups": []any{pick(r, []string{"admins", "devs"})}}}
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

func TestNativeAgreesWithTopdown(t *testing.T) {
	seeds := 60
	if testing.Short() || raceEnabled {
		seeds = 20
	}
	ctx := context.Background()
	var allowed, denied, nativePkgs, topdownPkgs int
	defer func() {
		t.Logf("decisions: %d allow, %d deny; packages: %d native, %d topdown", allowed, denied, nativePkgs, topdownPkgs)
		if allowed < 100 || denied < 100 || nativePkgs < 10 || topdownPkgs < 3 {
			t.Errorf("the generator no longer exercises both outcomes and both evaluators")
		}
	}()
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		files := map[string]string{".manifest": `{"revision": "gen", "roots": ["mesh/policies/gen"]}`}
		for n := range 1 + r.IntN(6) {
			files[fmt.Sprintf("p%d.rego", n)] = genPackage(r, "gen", n)
		}
		dir := writeBundle(t, t.TempDir(), files)
		native := loadEngine(t, Config{}, dir)
		reference := loadEngine(t, Config{Topdown: true, CacheSize: -1}, dir)
		prog := native.current.Load().prog
		if prog == nil {
			t.Fatalf("seed %d: no native program", seed)
		}
		topdownPkgs += len(prog.notes)
		nativePkgs += len(files) - 1 - len(prog.notes)
		for i := range 200 {
			in := genInput(r)
			want, werr := reference.Decide(ctx, in)
			got, gerr := native.Decide(ctx, in)
			again, _ := native.Decide(ctx, in) // through the cache for L4
			if werr != nil || gerr != nil {
				t.Fatalf("seed %d input %d: errors topdown=%v native=%v", seed, i, werr, gerr)
			}
			if !reflect.DeepEqual(want, got) || !reflect.DeepEqual(want, again) {
				t.Errorf("seed %d input %d disagree\ninput: %+v\ntopdown: %+v\nnative:  %+v\ncached:  %+v\npolicies:\n%s",
					seed, i, in, want, got, again, joinFiles(files))
				return
			}
			if want.Allow {
				allowed++
			} else {
				denied++
			}
		}
	}
}

func joinFiles(files map[string]string) string {
	var b strings.Builder
	for name, src := range files {
		fmt.Fprintf(&b, "--- %s\n%s\n", name, src)
	}
	return b.String()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
