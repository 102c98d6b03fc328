package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/regomesh/regomesh/internal/latencybench"
	meshrego "github.com/regomesh/regomesh/rego"
)

// The engine's decisions, measured per input family next to a plain OPA
// baseline of the same bundle in the same run (rego.New(...).PrepareForEval
// once, Eval per decision):
//
//	go test -run '^$' -bench 'Decide' -benchtime 0.5s -count 5 ./policy
//
// Each benchmark reports p50-ns, p99-ns and mean-ns over its iterations
// (per-iteration clock reads included, so slightly pessimistic: see
// BenchmarkClockOverhead), and the work behind a decision, as
// Explanation counts it on the same code path:
//
//   - candidates/op: the rules the rule index hands over for the input;
//     every one of them is decided, none skipped;
//   - shared/op: the evaluations that decide conditions for many
//     candidates at once (a condition every candidate of a bucket has,
//     tested once, or a per-field lookup giving the candidates whose
//     condition on that field holds, as a bitset);
//   - tested/op: the candidates then tested one by one, on the conditions
//     no shared evaluation decided.
//
// The generated rules of a candidate group differ only in their last
// condition, so 100 candidates cost a handful of shared evaluations and
// no test one by one. A family with 0 candidates measures the index's map
// lookups, the cache probe and store, and nothing else.
//
// The L4 cache: "native" engines keep it on, as ztunnel does, but every
// iteration misses it: the inputs vary their source IP over benchIPs
// distinct addresses, 64 times the number of entries the benchmark's cache
// holds (benchCacheSize), so every decision pays the probe, the evaluation
// and the store, and checkMisses proves an input decided a ring ago is no
// longer cached. "native-cached" engines repeat one input: cache hits,
// named as such. L7 decisions are never cached.

const rulesPerPackage = 100

// Candidate groups of the generated bundles: the rules keyed under a
// source namespace the families' inputs come from. Every rule in a group
// holds for the group's input up to its last condition, which fails
// (destination.service_account != "web"), except the last rule of
// groupLastMatches, which holds.
var benchGroups = []struct {
	namespace string
	size      int
}{
	{"ten", 10},
	{"hundred", 100},
	{"hundred-last", 100},
}

// benchRule is generated deny rule i with 10 conditions; rules outside the
// candidate groups match sources from namespace "src-<i>" only.
func benchRule(i int, l7 bool) string {
	ns, last := fmt.Sprintf("src-%d", i), "admin"
	first := 0
	for _, g := range benchGroups {
		if i >= first && i < first+g.size {
			ns, last = g.namespace, "web"
			if g.namespace == "hundred-last" && i == first+g.size-1 {
				last = "admin"
			}
		}
		first += g.size
	}
	conds := []string{
		fmt.Sprintf("input.source.namespace == %q", ns),
		`input.destination.namespace == "ns-3"`,
		"input.destination.port == 8003",
		fmt.Sprintf("startswith(input.source.principal, %q)", "spiffe://td/ns/"+ns+"/"),
		`input.source.service_account == "sa-1"`,
		`net.cidr_contains("10.3.0.0/16", input.source.ip)`,
		`not input.destination.labels.tier == "debug"`,
		"input.connection.mtls",
		`input.source.trust_domain == "td"`,
		fmt.Sprintf("input.destination.service_account != %q", last),
	}
	if l7 {
		conds[6] = `input.request.method == "GET"`
		conds[7] = `startswith(input.request.url_path, "/api/3/")`
		conds[8] = `input.request.headers["x-tenant"] == "t-3"`
	}
	return fmt.Sprintf("deny contains {\"policy\": \"bench/p%d\", \"rule\": %d} if {\n\t%s\n}\n", i/rulesPerPackage, i, strings.Join(conds, "\n\t"))
}

func benchBundle(b testing.TB, rules int, l7 bool) string {
	b.Helper()
	dir := b.TempDir()
	files := map[string]string{".manifest": `{"revision": "bench", "roots": ["mesh/policies/bench"]}`}
	for p := 0; p*rulesPerPackage < rules; p++ {
		var src strings.Builder
		fmt.Fprintf(&src, "package mesh.policies.bench.p%03d\n\n", p)
		for i := p * rulesPerPackage; i < min(rules, (p+1)*rulesPerPackage); i++ {
			src.WriteString(benchRule(i, l7))
		}
		files[fmt.Sprintf("p%d.rego", p)] = src.String()
	}
	return writeBundle(b, dir, files)
}

// benchFamily is one kind of input and what the engine must answer.
type benchFamily struct {
	name       string
	in         Input
	allow      bool
	candidates int // rules the index hands over, every point together
}

// benchConditions is how many conditions a generated rule has: the most
// shared evaluations a candidate group can need, the index deciding one.
const benchConditions = 10

func benchFamilies(l7 bool) []benchFamily {
	in := func(ns string) Input { return benchInput(ns, l7) }
	return []benchFamily{
		{name: "no-candidate", in: in("client"), allow: true, candidates: 0},
		{name: "10-candidates-none-match", in: in("ten"), allow: true, candidates: 10},
		{name: "100-candidates-none-match", in: in("hundred"), allow: true, candidates: 100},
		{name: "100-candidates-last-matches", in: in("hundred-last"), allow: false, candidates: 100},
	}
}

func benchInput(ns string, l7 bool) Input {
	in := Input{
		Layer:       L4,
		Source:      Source{Principal: "spiffe://td/ns/" + ns + "/sa/sa-1", IP: "10.3.0.7", Port: 41234},
		Destination: Destination{IP: "10.9.0.4", Port: 8003, Namespace: "ns-3", Workload: "web-1", ServiceAccount: "web", Labels: map[string]string{"app": "web"}},
		Connection:  Connection{MTLS: true},
	}
	if l7 {
		in.Layer = L7
		in.Request = &Request{Method: "GET", Path: "/api/3/items", Host: "web", Headers: map[string]string{"x-tenant": "t-3"}}
	}
	return in
}

func BenchmarkDecideL4(b *testing.B) {
	for _, rules := range []int{1000, 10000} {
		benchRules(b, rules, false)
	}
}

func BenchmarkDecideL7(b *testing.B) {
	for _, rules := range []int{1000, 10000} {
		benchRules(b, rules, true)
	}
}

func benchRules(b *testing.B, rules int, l7 bool) {
	dir := benchBundle(b, rules, l7)
	native := loadEngine(b, Config{CacheSize: benchCacheSize, Logger: quietLogger()}, dir)
	cached := loadEngine(b, Config{Logger: quietLogger()}, dir)
	for _, f := range benchFamilies(l7) {
		prefix := fmt.Sprintf("rules=%d/%s", rules, f.name)
		b.Run(prefix+"/native", func(b *testing.B) { benchEngine(b, native, f, true) })
		if !l7 {
			b.Run(prefix+"/native-cached", func(b *testing.B) { benchEngine(b, cached, f, false) })
		}
		if f.name == "no-candidate" || f.name == "100-candidates-last-matches" {
			b.Run(prefix+"/opa-prepared-eval", func(b *testing.B) { benchPlainOPA(b, dir, f.in) })
		}
	}
}

// TestBenchFamilies holds the benchmark inputs to what their names say:
// the decision, and the rules left to decide after the index's lookups;
// and the decision to sharing its work across them: at most one shared
// evaluation per condition of a rule, and no candidate tested one by one.
func TestBenchFamilies(t *testing.T) {
	for _, l7 := range []bool{false, true} {
		e := loadEngine(t, Config{CacheSize: -1, Logger: quietLogger()}, benchBundle(t, 300, l7))
		for _, f := range benchFamilies(l7) {
			d, err := e.Decide(context.Background(), f.in)
			if err != nil || d.Allow != f.allow {
				t.Errorf("l7=%v %s: want allow=%v: %+v %v", l7, f.name, f.allow, d, err)
			}
			if got := candidatesFor(t, e, f.in); got != f.candidates {
				t.Errorf("l7=%v %s: %d candidates, want %d", l7, f.name, got, f.candidates)
			}
			x, err := e.Explain(context.Background(), f.in)
			if err != nil || x.Candidates != f.candidates {
				t.Errorf("l7=%v %s: Explain says %d candidates, want %d (%v)", l7, f.name, x.Candidates, f.candidates, err)
			}
			if x.Tested != 0 || x.Shared >= benchConditions {
				t.Errorf("l7=%v %s: %d shared evaluations and %d candidates tested one by one, want fewer than %d and none",
					l7, f.name, x.Shared, x.Tested, benchConditions)
			}
		}
	}
}

// benchIPs source addresses (10.3.0.0/16, which the generated rules test
// with net.cidr_contains) make L4 inputs that a cache of benchCacheSize
// entries cannot hold.
const (
	benchIPs       = 1 << 16
	benchCacheSize = benchIPs / 64
)

var benchIPRing = func() []string {
	ips := make([]string, benchIPs)
	for i := range ips {
		ips[i] = fmt.Sprintf("10.3.%d.%d", i>>8, i&0xff)
	}
	return ips
}()

// benchEngine decides f.in (with varying source IPs when vary is set) and
// reports the candidates the index handed to the matchers.
func benchEngine(b *testing.B, e *Engine, f benchFamily, vary bool) {
	ctx := context.Background()
	in := f.in
	if d, err := e.Decide(ctx, in); err != nil || d.Allow != f.allow {
		b.Fatalf("%s: want allow=%v: %+v %v", f.name, f.allow, d, err)
	}
	if got := candidatesFor(b, e, in); got != f.candidates {
		b.Fatalf("%s: the index hands %d candidates to the matchers, want %d", f.name, got, f.candidates)
	}
	ring := benchIPRing[:1]
	if vary && f.in.Layer == L4 {
		ring = benchIPRing
		checkMisses(b, e, in)
	}
	latencybench.Measure(b, func(i int) {
		in.Source.IP = ring[i%len(ring)]
		if _, err := e.Decide(ctx, in); err != nil {
			b.Fatal(err)
		}
	})
	reportWork(b, e, f.in) // after Measure: its ResetTimer drops metrics reported before
}

// reportWork reports what the decision of in takes: candidates/op,
// shared/op and tested/op (see the top of this file).
func reportWork(b *testing.B, e *Engine, in Input) {
	x, err := e.Explain(context.Background(), in)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(x.Candidates), "candidates/op")
	b.ReportMetric(float64(x.Shared), "shared/op")
	b.ReportMetric(float64(x.Tested), "tested/op")
}

// candidatesFor is the number of rules the index hands over for in.
func candidatesFor(tb testing.TB, e *Engine, in Input) int {
	tb.Helper()
	if err := in.Prepare(); err != nil {
		tb.Fatal(err)
	}
	prog := e.current.Load().prog
	if prog == nil || prog.fallback != nil {
		tb.Fatal("the benchmark bundle must be native throughout")
	}
	return prog.candidates(&in)
}

// checkMisses decides a ring of inputs and checks the first is no longer
// cached: the benchmark's iterations are all misses.
func checkMisses(tb testing.TB, e *Engine, in Input) {
	tb.Helper()
	for _, ip := range benchIPRing {
		in.Source.IP = ip
		if _, err := e.Decide(context.Background(), in); err != nil {
			tb.Fatal(err)
		}
	}
	in.Source.IP = benchIPRing[0]
	var key l4Key
	cache := e.current.Load().cache.Load()
	cache.fillKey(&key, &in)
	if _, _, hit := cache.get(&key); hit {
		tb.Fatalf("the L4 cache still holds an input decided %d decisions ago: the benchmark would measure hits", benchIPs)
	}
}

// benchPlainOPA is the baseline: the stock OPA API on the same bundle.
func benchPlainOPA(b *testing.B, dir string, in Input) {
	ctx := context.Background()
	opts := []func(*rego.Rego){rego.Query(meshrego.DecisionPath), rego.LoadBundle(dir)}
	err := filepathWalkRego(func(name, src string) { opts = append(opts, rego.Module(name, src)) })
	if err != nil {
		b.Fatal(err)
	}
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := in.Prepare(); err != nil {
		b.Fatal(err)
	}
	doc, err := inputValue(&in)
	if err != nil {
		b.Fatal(err)
	}
	latencybench.Measure(b, func(int) {
		if rs, err := pq.Eval(ctx, rego.EvalParsedInput(doc)); err != nil || len(rs) != 1 {
			b.Fatal(err, rs)
		}
	})
}

// filepathWalkRego hands every library module (tests excluded) to add.
func filepathWalkRego(add func(name, src string)) error {
	mods, err := meshrego.Modules()
	if err != nil {
		return err
	}
	for name, m := range mods {
		add(name, m.String())
	}
	return nil
}

// BenchmarkClockOverhead is what latencybench.Measure's per-iteration clock reads cost
// on this machine; subtract it from the figures above.
func BenchmarkClockOverhead(b *testing.B) {
	latencybench.Measure(b, func(int) {})
}
