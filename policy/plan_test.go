package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// TestPlanAgreesWithMatchers holds bucket plans to their invariant: the
// rules a plan lets through, after their residual conditions, are exactly
// the rules whose conditions hold, tested one by one. Buckets of random
// conditions over a few fields (equalities, memberships, !=, <,
// truthiness, definedness, prefixes, suffixes, contains, CIDRs, their
// negations and ORs) meet random inputs, absent, mistyped and composite
// values, odd addresses and prefixes included.
func TestPlanAgreesWithMatchers(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8, rand.Uint64()}
	if raceEnabled {
		seeds = []uint64{1, 2, rand.Uint64()}
	}
	planned := 0
	for _, seed := range seeds {
		r := rand.New(rand.NewPCG(seed, 11))
		for range 30 {
			n := planMinRules + r.IntN(150)
			tests := make([]allOf, n)
			ids := make([]int32, n)
			for i := range tests {
				ids[i] = int32(i)
				for range 1 + r.IntN(5) {
					tests[i] = append(tests[i], randomCondition(r))
				}
			}
			idx := auditIndex(tests)
			b := newBucket(idx, pointAudit, ids)
			if b.plan == nil {
				continue
			}
			planned++
			for range 60 {
				in := randomPlanInput(r)
				var want []int
				for i, c := range tests {
					if c.match(&in) {
						want = append(want, i)
					}
				}
				got := planMatches(b, &in)
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d: %d rules: the plan passes %v, the matchers %v, for %+v", seed, n, got, want, in)
				}
			}
		}
	}
	if planned < 10*len(seeds) {
		t.Fatalf("only %d buckets had a plan: the test exercises too few", planned)
	}
}

// auditIndex is an index of audit rules with the given tests, each
// contributing its number.
func auditIndex(tests []allOf) *ruleIndex {
	idx := &ruleIndex{tests: tests}
	for i := range tests {
		idx.rules = append(idx.rules, nativeRule{entry: &entry{value: ast.IntNumberTerm(i).Value, enforced: true}})
	}
	return idx
}

// planMatches decides bucket b for in, as a decision does, and returns
// the rules it added, in order.
func planMatches(b *bucket, in *Input) []int {
	acc := accumulators.Get().(*accumulator)
	defer acc.release()
	b.decide(in, acc)
	var out []int
	for _, e := range acc.audit {
		n, _ := e.value.(ast.Number).Int()
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

var planFields = func() []*field {
	var out []*field
	for _, p := range []string{"input.source.principal", "input.source.ip", "input.destination.port",
		"input.destination.labels.app", "input.connection.mtls", "input.request.auth.claims.groups"} {
		f, _ := fieldFor(ast.MustParseRef(p))
		out = append(out, f)
	}
	return out
}()

var (
	planStrings = []string{"", "a", "ab", "abc", "b", "spiffe://td/ns/x/sa/y", "spiffe://td/ns/x/", "x/sa/y", "10.1.2.3",
		"web", "web-1", "1-web"}
	planCIDRs = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "::/0", "fe80::/10", "::ffff:10.0.0.0/104", "2001:db8::/32"}
)

func randomScalar(r *rand.Rand) value {
	switch r.IntN(6) {
	case 0:
		return numberValue(8000 + r.IntN(3))
	case 1:
		return value{kind: kindBool, b: r.IntN(2) == 0}
	case 2:
		return value{kind: kindNull}
	}
	return stringValue(planStrings[r.IntN(len(planStrings))])
}

func randomLeaf(r *rand.Rand, f *field) matcher {
	switch r.IntN(10) {
	case 0:
		return compare{f: f, op: opNeq, want: randomScalar(r)}
	case 1:
		return compare{f: f, op: opLt, want: randomScalar(r)}
	case 2:
		var keys []valueKey
		for range 1 + r.IntN(3) {
			keys = append(keys, randomScalar(r).key())
		}
		return memberOf{f: f, set: newKeySet(keys)}
	case 3:
		return stringTest{f: f, op: stringOp(r.IntN(3)), arg: planStrings[r.IntN(len(planStrings))]}
	case 4:
		return cidrContains{f: f, prefix: netip.MustParsePrefix(planCIDRs[r.IntN(len(planCIDRs))]).Masked()}
	case 5:
		return truthy{f}
	case 6:
		return defined{f}
	}
	return compare{f: f, op: opEq, want: randomScalar(r)}
}

func randomCondition(r *rand.Rand) matcher {
	f := planFields[r.IntN(len(planFields))]
	leaf := func() matcher { return randomLeaf(r, f) }
	switch r.IntN(6) {
	case 0:
		return not{leaf()}
	case 1, 2:
		or := anyOf{allOf{leaf()}, allOf{leaf()}}
		if r.IntN(4) == 0 {
			f = planFields[r.IntN(len(planFields))]
			or = append(or, leaf()) // maybe another field: left to the residual
		}
		if r.IntN(2) == 0 {
			return not{or}
		}
		return or
	}
	return leaf()
}

func randomPlanInput(r *rand.Rand) Input {
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	ips := []string{"", "10.1.2.3", "10.2.0.1", "192.168.0.1", "::ffff:10.1.2.3", "fe80::1%eth0", "::ffff:10.1.2.3%eth0",
		"2001:db8::1", "10.1.0.0/16", "10.0.0.0/7", "::ffff:10.1.0.0/112", "fe80::/64", "not-an-ip", "a"}
	in := Input{
		Layer:       L7,
		Source:      Source{Principal: pick(planStrings), IP: pick(ips)},
		Destination: Destination{Port: []int{0, 8000, 8001, 8002}[r.IntN(4)]},
		Connection:  Connection{MTLS: r.IntN(2) == 0},
	}
	if r.IntN(4) > 0 {
		in.Destination.Labels = map[string]string{"app": pick(planStrings)}
	}
	if r.IntN(3) > 0 {
		var groups any
		switch r.IntN(5) {
		case 0:
			groups = []any{pick(planStrings), pick(planStrings)}
		case 1:
			groups = float64(8000 + r.IntN(3))
		case 2:
			groups = nil
		case 3:
			groups = r.IntN(2) == 0
		default:
			groups = pick(planStrings)
		}
		in.Request = &Request{Auth: &Auth{Claims: map[string]any{"groups": groups}}}
	}
	return in
}

// TestPlanLookups checks the lookup tables on their own, where a mistake
// would otherwise hide among random rules: a prefix, suffix and CIDR
// found for each length, and mapped, zoned and prefix inputs.
func TestPlanLookups(t *testing.T) {
	f := planFields[0]
	tests := []allOf{
		{stringTest{f: f, op: opPrefix, arg: ""}},
		{stringTest{f: f, op: opPrefix, arg: "ab"}},
		{stringTest{f: f, op: opSuffix, arg: "bc"}},
		{cidrContains{f: f, prefix: netip.MustParsePrefix("10.0.0.0/8")}},
		{cidrContains{f: f, prefix: netip.MustParsePrefix("10.1.0.0/16")}},
		{not{compare{f: f, op: opEq, want: stringValue("abc")}}},
	}
	ids := []int32{0, 1, 2, 3, 4, 5}
	b := newBucket(auditIndex(tests), pointAudit, ids)
	if b.plan == nil || len(b.plan.groups) != 1 || len(b.plan.residual[0]) != 0 {
		t.Fatalf("want one group deciding every rule: %+v", b.plan)
	}
	for _, tc := range []struct {
		value string
		want  []int
	}{
		{"abc", []int{0, 1, 2}},
		{"abd", []int{0, 1, 5}},
		{"xbc", []int{0, 2, 5}},
		{"10.1.2.3", []int{0, 3, 4, 5}},
		{"::ffff:10.1.2.3", []int{0, 3, 4, 5}},
		{"10.2.0.0/16", []int{0, 3, 5}},
		{"10.0.0.0/7", []int{0, 5}},
		{"fe80::1%eth0", []int{0, 5}},
		{"", []int{5}},
	} {
		in := Input{Source: Source{Principal: tc.value}}
		if got := planMatches(b, &in); !slices.Equal(got, tc.want) {
			t.Errorf("%q: plan passes %v, want %v", tc.value, got, tc.want)
		}
		var brute []int
		for i, c := range tests {
			if c.match(&in) {
				brute = append(brute, i)
			}
		}
		if !slices.Equal(brute, tc.want) {
			t.Errorf("%q: the matchers pass %v, want %v (the table is wrong)", tc.value, brute, tc.want)
		}
	}
}

// TestPlannedBucketsAgreeWithTopdown decides, natively and with topdown,
// bundles whose rules crowd into large buckets (many policies selecting
// one workload, as a busy service's ALLOWs do), so that decisions go
// through plans, whole allow_scope buckets, the skipped allow_scope point
// and remembered reasons; dry-run entries and conditions a plan leaves to
// the residual included. Explain must agree and name the same rule.
func TestPlannedBucketsAgreeWithTopdown(t *testing.T) {
	ctx := context.Background()
	seeds, inputs := []uint64{1, 2, 3, 4, 5, 6, rand.Uint64()}, 200
	if raceEnabled { // see raceEnabled: topdown is the slow side
		seeds, inputs = []uint64{1, 2, rand.Uint64()}, 60
	}
	for k, seed := range seeds {
		random := k == len(seeds)-1
		var (
			r         *rand.Rand
			files     map[string]string
			native    *Engine
			reference *Engine
		)
		// A random seed whose crowd is too thin to go through plans (its
		// bundle is still decided right, but shows nothing here) gives way
		// to the next seed; a fixed seed must be crowded.
		for tries := 0; ; tries++ {
			r = rand.New(rand.NewPCG(seed, 13))
			files = map[string]string{".manifest": `{"revision": "planned", "roots": ["mesh/policies/hot"]}`}
			dryRuns := r.IntN(2) == 0 // else no dry-run entry, so allow_scope buckets can be whole
			for n := range 16 + r.IntN(30) {
				files[fmt.Sprintf("p%d.rego", n)] = genCrowdedPackage(r, n, dryRuns)
			}
			dir := writeBundle(t, t.TempDir(), files)
			native = loadEngine(t, Config{Logger: quietLogger()}, dir)
			prog := native.current.Load().prog
			if prog == nil || prog.fallback != nil {
				t.Fatalf("seed %d: the bundle must be native throughout: %v", seed, prog)
			}
			planned, whole := plannedBuckets(prog)
			if planned >= 2 && (whole >= 1 || dryRuns) {
				reference = loadEngine(t, Config{Topdown: true, CacheSize: -1, Logger: quietLogger()}, dir)
				break
			}
			if !random || tries == 20 {
				t.Fatalf("seed %d: only %d buckets have a plan, %d a whole allow_scope", seed, planned, whole)
			}
			seed++
		}
		for i := range inputs {
			in := genInput(r)
			if r.IntN(10) < 7 {
				in.Destination.Labels = map[string]string{"app": "hot"}
				if r.IntN(3) == 0 {
					in.Destination.Labels["tier"] = pick(r, []string{"debug", "prod"})
				}
			}
			if r.IntN(3) == 0 { // a source few rules admit
				in.Source = Source{Principal: principal("outside", "x"), IP: "192.0.2.1"}
			}
			want, werr := reference.Decide(ctx, in)
			got, gerr := native.Decide(ctx, in)
			again, aerr := native.Decide(ctx, in)
			x, xerr := native.Explain(ctx, in)
			if !sameError(werr, gerr) || !sameError(werr, aerr) || !sameError(werr, xerr) ||
				!reflect.DeepEqual(want, got) || !reflect.DeepEqual(want, again) || !reflect.DeepEqual(want, x.Decision) {
				t.Fatalf("seed %d input %d disagree\ninput: %+v\ntopdown: %+v %v\nnative:  %+v %v\ncached:  %+v %v\nexplain: %+v %v\npolicies:\n%s",
					seed, i, in, want, werr, got, gerr, again, aerr, x.Decision, xerr, joinFiles(files))
			}
		}
	}
}

// plannedBuckets counts the buckets of prog that have a plan, and those
// of them summarised as a whole allow_scope.
func plannedBuckets(prog *program) (planned, whole int) {
	seen := map[*bucket]bool{}
	count := func(b *bucket) {
		if b != nil && b.plan != nil && !seen[b] {
			seen[b] = true
			planned++
			if b.scope != nil {
				whole++
			}
		}
	}
	for _, idx := range prog.points {
		count(idx.scan)
		for _, k := range idx.keyed {
			for _, b := range k.byValue {
				count(b)
			}
		}
	}
	return planned, whole
}

// genCrowdedPackage is policy n of a crowd selecting app=hot: its scope,
// ALLOW rules over conditions the plans decide (and some they leave to
// the residual), and now and then a DENY or an audit rule.
func genCrowdedPackage(r *rand.Rand, n int, dryRuns bool) string {
	id := fmt.Sprintf("hot/p%d", n)
	var b strings.Builder
	fmt.Fprintf(&b, "package mesh.policies.hot.p%d\n\n", n)
	switch {
	case n%10 == 3: // namespace-wide: a bucket of its own, planned or not
		b.WriteString("applies if input.destination.namespace == \"shop\"\n\n")
	case r.IntN(2) == 0:
		b.WriteString("applies if input.destination.labels.app == \"hot\"\n\n")
	default:
		b.WriteString("applies if {\n\tinput.destination.labels.app == \"hot\"\n\tinput.destination.namespace == \"shop\"\n}\n\n")
	}
	b.WriteString("from_nets if net.cidr_contains(\"10.0.0.0/8\", input.source.ip)\n\n")
	b.WriteString("from_nets if net.cidr_contains(\"2001:db8::/32\", input.source.ip)\n\n")
	dryRun := ""
	if dryRuns && r.IntN(12) == 0 {
		dryRun = `, "dry_run": true`
	}
	fmt.Fprintf(&b, "allow_scope contains {\"policy\": %q%s} if applies\n\n", id, dryRun)
	for i := range 1 + r.IntN(3) {
		point := pick(r, []string{"allow", "allow", "allow", "deny", "audit"})
		fmt.Fprintf(&b, "%s contains {\"policy\": %q, \"rule\": %d%s} if {\n\tapplies\n", point, id, i, dryRun)
		for c := range 2 + r.IntN(4) {
			fmt.Fprintf(&b, "\t%s\n", crowdedCondition(r, c))
		}
		b.WriteString("}\n\n")
	}
	return b.String()
}

// crowdedCondition is condition c of a body.
func crowdedCondition(r *rand.Rand, c int) string {
	ns, sa := pick(r, poolNS), pick(r, poolSA)
	switch r.IntN(18) {
	case 0:
		return fmt.Sprintf("input.source.namespace == %q", ns)
	case 1:
		return fmt.Sprintf("input.source.namespace in {%q, %q}", ns, pick(r, poolNS))
	case 2:
		return fmt.Sprintf("input.source.namespace != %q", ns)
	case 3:
		return fmt.Sprintf("startswith(input.source.principal, %q)", "spiffe://td/ns/"+ns+"/")
	case 4:
		return fmt.Sprintf("not startswith(input.source.principal, %q)", "spiffe://td/ns/"+ns+"/")
	case 5:
		return fmt.Sprintf("endswith(input.source.principal, %q)", "/sa/"+sa)
	case 6:
		return fmt.Sprintf("net.cidr_contains(%q, input.source.ip)", pick(r, []string{"10.0.0.0/24", "10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"}))
	case 7:
		return "from_nets"
	case 8:
		return "not from_nets"
	case 9:
		return fmt.Sprintf("input.destination.port == %d", pick(r, poolPorts))
	case 10:
		return fmt.Sprintf("input.destination.port in {%d, %d}", pick(r, poolPorts), pick(r, poolPorts))
	case 11:
		return fmt.Sprintf("input.destination.port >= %d", pick(r, poolPorts))
	case 12:
		return `not input.destination.labels.tier == "debug"`
	case 13:
		return pick(r, []string{"input.connection.mtls", "not input.connection.mtls"})
	case 14:
		return fmt.Sprintf("input.source.service_account == %q", sa)
	case 15:
		return fmt.Sprintf("x%d := input.source.service_account\n\tx%d != \"db\"", c, c)
	case 16:
		return fmt.Sprintf("contains(input.source.principal, %q)", "/sa/"+sa)
	}
	return fmt.Sprintf("input.request.method == %q", pick(r, poolMethods))
}
