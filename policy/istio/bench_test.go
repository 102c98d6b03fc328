package istio_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/internal/latencybench"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	meshrego "github.com/regomesh/regomesh/rego"
)

// The translator's performance, next to the engine's own benchmarks
// (policy/bench_test.go): translating and compiling large policy sets, and
// deciding on the result at both layers with the native program, with and
// without the L4 cache, beside a plain OPA PrepareForEval+Eval of the same
// bundle. Run with
//
//	go test -run '^$' -bench . -benchtime 2s ./policy/istio
//
// The L4 target is <= 2 us p50 uncached at 10,000 rules.

// benchPolicies is a mesh of n policies over 100 namespaces: each selects
// one workload (app=app-<i>); 7 in 10 are ALLOWs with an L4 rule (a
// principal and a port) and an L7 rule (methods and paths), the others
// DENYs with an L4 rule and an L7 one. Two mesh-wide policies apply to
// every decision. Every policy has two rules, so n policies are 2n rules.
func benchPolicies(n int) []*istio.Policy {
	out := []*istio.Policy{
		{Namespace: "istio-system", Name: "require-mtls", Action: istio.Deny,
			Rules: []istio.Rule{{From: []istio.Source{{NotPrincipals: []string{"*"}}}}}},
		{Namespace: "istio-system", Name: "no-debug", Action: istio.Deny,
			Rules: []istio.Rule{{To: []istio.Operation{{Ports: []string{"15000"}}}}}},
	}
	for i := range n - 2 {
		p := &istio.Policy{
			Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("policy-%d", i),
			Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
		}
		if i%10 < 7 {
			p.Action = istio.Allow
			p.Rules = []istio.Rule{
				{
					From: []istio.Source{{Principals: []string{fmt.Sprintf("cluster.local/ns/src-%d/sa/sa-%d", i%50, i%7)}}},
					To:   []istio.Operation{{Ports: []string{fmt.Sprint(8000 + i%50)}}},
				},
				{
					From: []istio.Source{{Namespaces: []string{fmt.Sprintf("src-%d", i%50)}}},
					To:   []istio.Operation{{Methods: []string{"GET", "HEAD"}, Paths: []string{fmt.Sprintf("/api/%d/*", i%13)}}},
				},
			}
		} else {
			p.Action = istio.Deny
			p.Rules = []istio.Rule{
				{From: []istio.Source{{Namespaces: []string{fmt.Sprintf("bad-%d", i%20)}}}},
				{To: []istio.Operation{{Methods: []string{"DELETE"}, Ports: []string{"8080"}}}},
			}
		}
		out = append(out, p)
	}
	return out
}

func BenchmarkTranslate(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		policies := benchPolicies(n)
		b.Run(fmt.Sprintf("policies=%d/translate", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := istio.Translate(policies, istio.Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("policies=%d/translate+bundle+load", n), func(b *testing.B) {
			for b.Loop() {
				tr, err := istio.Translate(policies, istio.Options{})
				if err != nil {
					b.Fatal(err)
				}
				loadBenchEngine(b, tr, policy.Config{Logger: quietLogger()})
			}
		})
	}
}

// BenchmarkDecide decides over AuthorizationPolicies of the shapes meshes
// write (meshPolicies: exact and prefix principals, namespaces, service
// accounts, workload selectors and namespace-wide policies, ports and
// not-ports, CIDRs), translated, per input family (decideFamilies), beside
// plain OPA on the same bundle:
//
//	go test -run '^$' -bench 'Decide' -benchtime 0.5s -count 5 ./policy/istio
//
// It reports p50-ns, p99-ns and mean-ns, and the work behind a decision
// as policy.Explanation counts it on the same code path: candidates/op,
// the rules the engine's index hands over (all decided); shared/op, the
// evaluations that decide conditions for many of them at once (a
// condition they all have, tested once, or a per-field lookup: a
// principal prefix, a port, a CIDR); tested/op, the candidates then
// tested one by one. Once an ALLOW or DENY matched, the ALLOW policies'
// scope is not evaluated, so its candidates count in neither of the last
// two. The L4 cache stays
// on, as in ztunnel, and every iteration misses it: source IPs vary over
// benchIPs addresses, 64 times what the cache holds, and checkMisses
// proves a whole ring is evaluated, none served from the cache. L7
// decisions are never cached.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		tr, err := istio.Translate(meshPolicies(n), istio.Options{})
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		if err := tr.WriteBundleDir(dir); err != nil {
			b.Fatal(err)
		}
		native := loadBenchEngine(b, tr, policy.Config{CacheSize: benchCacheSize, Logger: quietLogger()})
		checkMisses(b, tr)
		for _, layer := range []policy.Layer{policy.L4, policy.L7} {
			for _, f := range decideFamilies(layer) {
				prefix := fmt.Sprintf("policies=%d/%s/%s", n, layer, f.name)
				b.Run(prefix+"/native", func(b *testing.B) { benchDecide(b, native, f) })
				if f.name == "100-selecting-one-matches" {
					b.Run(prefix+"/opa-prepared-eval", func(b *testing.B) { benchPlainOPA(b, dir, f) })
				}
			}
		}
	}
}

// benchIPs source addresses (10.3.0.0/16) make L4 inputs that a cache of
// benchCacheSize entries cannot hold.
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

// checkMisses decides every family's input twice around the ring of
// source IPs on an engine configured as the benchmark's, with metrics:
// every decision must have been evaluated, none answered by the cache.
func checkMisses(b *testing.B, tr *istio.Translation) {
	reg := prometheus.NewRegistry()
	e := loadBenchEngine(b, tr, policy.Config{CacheSize: benchCacheSize, Logger: quietLogger(), Metrics: policy.NewMetrics(reg)})
	want := 0
	for _, f := range decideFamilies(policy.L4) {
		in := f.in
		for i := range 2 * benchIPs {
			in.Source.IP = benchIPRing[i%benchIPs]
			if _, err := e.Decide(context.Background(), in); err != nil {
				b.Fatal(err)
			}
		}
		want += 2 * benchIPs
	}
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	evaluated := uint64(0)
	for _, mf := range families {
		if mf.GetName() == "regomesh_policy_eval_seconds" {
			for _, m := range mf.GetMetric() {
				evaluated += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if evaluated != uint64(want) {
		b.Fatalf("%d of %d decisions evaluated: the L4 cache answered some, the benchmark would measure hits", evaluated, want)
	}
}

// decideFamily is one kind of input and what the engine must answer.
type decideFamily struct {
	name       string
	in         policy.Input
	policy     string // the deciding policy
	allow      bool
	candidates int // rules the index leaves to test
}

func loadBenchEngine(b *testing.B, tr *istio.Translation, cfg policy.Config) *policy.Engine {
	b.Helper()
	dir := b.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		b.Fatal(err)
	}
	bundle, err := policy.ReadBundle(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	e, err := policy.NewEngine(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Load(context.Background(), bundle); err != nil {
		b.Fatal(err)
	}
	return e
}

func benchDecide(b *testing.B, e *policy.Engine, f decideFamily) {
	ctx := context.Background()
	x, err := e.Explain(ctx, f.in)
	if err != nil || x.Decision.Allow != f.allow || x.Decision.Policy != f.policy {
		b.Fatalf("%s: want allow=%v by %q: %+v %v", f.name, f.allow, f.policy, x.Decision, err)
	}
	if x.Candidates != f.candidates {
		b.Fatalf("%s: the index leaves %d rules to test, want %d", f.name, x.Candidates, f.candidates)
	}
	in := f.in
	latencybench.Measure(b, func(i int) {
		if in.Layer == policy.L4 {
			in.Source.IP = benchIPRing[i%benchIPs]
		}
		if _, err := e.Decide(ctx, in); err != nil {
			b.Fatal(err)
		}
	})
	// After Measure: its ResetTimer drops metrics reported before.
	b.ReportMetric(float64(x.Candidates), "candidates/op")
	b.ReportMetric(float64(x.Shared), "shared/op")
	b.ReportMetric(float64(x.Tested), "tested/op")
}

// benchPlainOPA is the baseline: the stock OPA API on the same bundle and
// library, PrepareForEval once, Eval per decision.
func benchPlainOPA(b *testing.B, dir string, f decideFamily) {
	in := f.in
	ctx := context.Background()
	opts := []func(*rego.Rego){rego.Query(meshrego.DecisionPath), rego.LoadBundle(dir)}
	library, err := meshrego.Modules()
	if err != nil {
		b.Fatal(err)
	}
	for name, m := range library {
		opts = append(opts, rego.Module(name, m.String()))
	}
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		b.Fatal(err)
	}
	doc := inputValue(b, in)
	rs, err := pq.Eval(ctx, rego.EvalParsedInput(doc))
	if err != nil || len(rs) != 1 {
		b.Fatal(err, rs)
	}
	if allow, _ := rs[0].Expressions[0].Value.(map[string]any)["allow"].(bool); allow != f.allow {
		b.Fatalf("plain OPA disagrees on the benchmark input: %v", rs[0].Expressions[0].Value)
	}
	latencybench.Measure(b, func(int) {
		if rs, err := pq.Eval(ctx, rego.EvalParsedInput(doc)); err != nil || len(rs) != 1 {
			b.Fatal(err, rs)
		}
	})
}

// inputValue is the prepared input's JSON form as an ast.Value.
func inputValue(b *testing.B, in policy.Input) ast.Value {
	if err := in.Prepare(); err != nil {
		b.Fatal(err)
	}
	raw, err := json.Marshal(in)
	if err != nil {
		b.Fatal(err)
	}
	var doc any
	if err := util.UnmarshalJSON(raw, &doc); err != nil {
		b.Fatal(err)
	}
	v, err := ast.InterfaceToValue(doc)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// hotPolicies is how many ALLOW policies select,
// each admitting the sources of one team by principal prefix.
const hotPolicies = 100

// meshPolicies is a mesh of n policies: two mesh-wide DENYs (no
// plaintext, no admin port), 100 ALLOWs selecting one workload
// (shop/checkout) by prefix principals, ports and CIDRs, and the rest
// spread over 100 namespaces, cycling through five shapes, one in ten of
// them namespace-wide.
func meshPolicies(n int) []*istio.Policy {
	out := []*istio.Policy{
		{Namespace: "istio-system", Name: "require-mtls", Action: istio.Deny,
			Rules: []istio.Rule{{From: []istio.Source{{NotPrincipals: []string{"*"}}}}}},
		{Namespace: "istio-system", Name: "no-admin-port", Action: istio.Deny,
			Rules: []istio.Rule{{To: []istio.Operation{{Ports: []string{"15000"}}}}}},
	}
	for j := range hotPolicies {
		out = append(out, &istio.Policy{
			Namespace: "shop", Name: fmt.Sprintf("checkout-team-%d", j), Action: istio.Allow,
			Selector: map[string]string{"app": "checkout"},
			Rules: []istio.Rule{{
				From: []istio.Source{{
					Principals: []string{fmt.Sprintf("cluster.local/ns/team-%d/*", j)},
					IPBlocks:   []string{"10.0.0.0/8", fmt.Sprintf("172.%d.0.0/16", 16+j%16)},
				}},
				To: []istio.Operation{{Ports: []string{"8443", fmt.Sprint(9000 + j)}}},
			}},
		})
	}
	for i := range n - len(out) {
		out = append(out, meshPolicy(i))
	}
	return out
}

// meshPolicy is policy i of the rest of the mesh, in namespace
// ns-<i%100>, selecting app=app-<i> (namespace-wide when i%10 == 9).
func meshPolicy(i int) *istio.Policy {
	p := &istio.Policy{
		Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("policy-%d", i), Action: istio.Allow,
		Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
	}
	if i%10 == 9 {
		p.Selector = nil
	}
	src := fmt.Sprintf("src-%d", i%50)
	switch i % 5 {
	case 0: // exact principals and a port
		p.Rules = []istio.Rule{{
			From: []istio.Source{{Principals: []string{
				fmt.Sprintf("cluster.local/ns/%s/sa/sa-%d", src, i%7), fmt.Sprintf("cluster.local/ns/%s/sa/batch", src)}}},
			To: []istio.Operation{{Ports: []string{fmt.Sprint(8000 + i%50)}}},
		}}
	case 1: // a namespace from a CIDR
		p.Rules = []istio.Rule{{From: []istio.Source{{
			Namespaces: []string{src}, IPBlocks: []string{fmt.Sprintf("10.%d.0.0/16", i%250)}}}}}
	case 2: // prefix principals, any port but the debug one
		p.Rules = []istio.Rule{{
			From: []istio.Source{{Principals: []string{fmt.Sprintf("cluster.local/ns/%s/*", src)}}},
			To:   []istio.Operation{{NotPorts: []string{"9090"}}},
		}}
	case 3: // a DENY of a namespace, except a CIDR
		p.Action = istio.Deny
		p.Rules = []istio.Rule{{From: []istio.Source{{
			Namespaces: []string{fmt.Sprintf("bad-%d", i%20)}, NotIPBlocks: []string{"10.250.0.0/16"}}}}}
	case 4: // service accounts on two ports
		p.Rules = []istio.Rule{{
			From: []istio.Source{{ServiceAccounts: []string{fmt.Sprintf("%s/sa-%d", src, i%7)}}},
			To:   []istio.Operation{{Ports: []string{"8080", "8443"}}},
		}}
	}
	return p
}

// decideFamilies: a connection or request that exact principals admit,
// among few candidates; and ones to the workload 100 ALLOWs select, from
// a principal none admits, or one the last of them admits.
func decideFamilies(layer policy.Layer) []decideFamily {
	to := func(ns, app string, port int) policy.Destination {
		return policy.Destination{IP: "10.9.0.7", Port: port, Namespace: ns, Workload: app + "-7c9", ServiceAccount: app,
			Labels: map[string]string{"app": app}}
	}
	in := func(principal string, dst policy.Destination) policy.Input {
		in := policy.Input{Layer: layer, Destination: dst, Connection: policy.Connection{MTLS: true},
			Source: policy.Source{Principal: "spiffe://cluster.local/ns/" + principal, IP: "10.3.0.7", Port: 40222}}
		if layer == policy.L7 {
			in.Request = &policy.Request{Method: "GET", Path: "/api/items?page=2", Host: dst.Workload, Headers: map[string]string{"x-request-id": "7"}}
		}
		return in
	}
	const i = 600 // policy-600: exact principals src-0/sa-5 and src-0/batch, port 8000, app-600 in ns-0
	hot := to("shop", "checkout", 8443)
	// Candidates: the ALLOW rule and the allow_scope of each policy that
	// selects the destination, and require-mtls (not-principals: scanned).
	return []decideFamily{
		{name: "exact-principal-match", allow: true, policy: "ns-0/policy-600", candidates: 3,
			in: in("src-0/sa/batch", to("ns-0", fmt.Sprintf("app-%d", i), 8000))},
		{name: "100-selecting-none-match", allow: false, candidates: 2*hotPolicies + 1,
			in: in("outsider/sa/x", hot)},
		{name: "100-selecting-one-matches", allow: true, policy: fmt.Sprintf("shop/checkout-team-%d", hotPolicies-1), candidates: 2*hotPolicies + 1,
			in: in(fmt.Sprintf("team-%d/sa/x", hotPolicies-1), hot)},
	}
}
