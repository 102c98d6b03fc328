package policy

import (
	"math/rand/v2"
	"net/netip"
	"slices"
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
			b := newBucket(ids, tests)
			if b.plan == nil {
				continue
			}
			planned++
			idx := &ruleIndex{tests: tests}
			for i := range tests {
				idx.rules = append(idx.rules, nativeRule{entry: &entry{value: ast.IntNumberTerm(i).Value, enforced: true}})
			}
			for range 60 {
				in := randomPlanInput(r)
				var want []int
				for i, c := range tests {
					if c.match(&in) {
						want = append(want, i)
					}
				}
				got := planMatches(idx, b, &in)
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d: %d rules: the plan passes %v, the matchers %v, for %+v", seed, n, got, want, in)
				}
			}
		}
	}
	if planned < 100 {
		t.Fatalf("only %d buckets had a plan: the test exercises too few", planned)
	}
}

// planMatches decides bucket b of idx for in, as a decision does, and
// returns the rules it added, in order.
func planMatches(idx *ruleIndex, b *bucket, in *Input) []int {
	acc := accumulators.Get().(*accumulator)
	defer acc.release()
	idx.decide(b, in, pointAudit, acc)
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
		set := map[valueKey]struct{}{}
		for range 1 + r.IntN(3) {
			set[randomScalar(r).key()] = struct{}{}
		}
		return memberOf{f: f, set: set}
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
	b := newBucket(ids, tests)
	if b.plan == nil || len(b.plan.groups) != 1 || len(b.plan.residual[0]) != 0 {
		t.Fatalf("want one group deciding every rule: %+v", b.plan)
	}
	idx := &ruleIndex{tests: tests}
	for i := range tests {
		idx.rules = append(idx.rules, nativeRule{entry: &entry{value: ast.IntNumberTerm(i).Value, enforced: true}})
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
		if got := planMatches(idx, b, &in); !slices.Equal(got, tc.want) {
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
