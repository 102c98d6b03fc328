package istio_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"

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

// benchInput is a connection (or request) to the workload policy 1203
// (an ALLOW) selects, from the principal its L4 rule allows.
func benchInput(layer policy.Layer) policy.Input {
	const i = 203
	in := policy.Input{
		Layer: layer,
		Source: policy.Source{Principal: fmt.Sprintf("spiffe://cluster.local/ns/src-%d/sa/sa-%d", i%50, i%7),
			IP: "10.1.2.3", Port: 40222},
		Destination: policy.Destination{Namespace: fmt.Sprintf("ns-%d", i%100), Port: 8000 + i%50,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i)}, IP: "10.9.0.7", Workload: "app-203-7c9"},
		Connection: policy.Connection{MTLS: true},
	}
	if layer == policy.L7 {
		in.Request = &policy.Request{Method: "GET", Path: fmt.Sprintf("/api/%d/items?page=2", i%13), Host: "app.ns-3"}
	}
	return in
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

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		tr, err := istio.Translate(benchPolicies(n), istio.Options{})
		if err != nil {
			b.Fatal(err)
		}
		uncached := loadBenchEngine(b, tr, policy.Config{CacheSize: -1, Logger: quietLogger()})
		cached := loadBenchEngine(b, tr, policy.Config{Logger: quietLogger()})
		dir := b.TempDir()
		if err := tr.WriteBundleDir(dir); err != nil {
			b.Fatal(err)
		}
		rules := 2 * n
		for _, layer := range []policy.Layer{policy.L4, policy.L7} {
			in := benchInput(layer)
			b.Run(fmt.Sprintf("rules=%d/%s/native-uncached", rules, layer), func(b *testing.B) { benchDecide(b, uncached, in) })
			if layer == policy.L4 {
				b.Run(fmt.Sprintf("rules=%d/%s/native-cached", rules, layer), func(b *testing.B) { benchDecide(b, cached, in) })
			}
			b.Run(fmt.Sprintf("rules=%d/%s/opa-prepared-eval", rules, layer), func(b *testing.B) { benchPlainOPA(b, dir, in) })
		}
	}
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

func benchDecide(b *testing.B, e *policy.Engine, in policy.Input) {
	ctx := context.Background()
	d, err := e.Decide(ctx, in)
	if err != nil || !d.Allow || d.Policy != "ns-3/policy-203" {
		b.Fatalf("the benchmark input must be allowed by ns-3/policy-203: %+v %v", d, err)
	}
	measure(b, func() {
		if _, err := e.Decide(ctx, in); err != nil {
			b.Fatal(err)
		}
	})
}

// benchPlainOPA is the baseline: the stock OPA API on the same bundle and
// library, PrepareForEval once, Eval per decision.
func benchPlainOPA(b *testing.B, dir string, in policy.Input) {
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
	if allow, _ := rs[0].Expressions[0].Value.(map[string]any)["allow"].(bool); !allow {
		b.Fatalf("plain OPA denies the benchmark input: %v", rs[0].Expressions[0].Value)
	}
	measure(b, func() {
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

// measure runs op b.N times and reports p50 and p99 latency, as the
// engine's benchmarks do.
func measure(b *testing.B, op func()) {
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		op()
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(start))
		}
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(samples[len(samples)*99/100].Nanoseconds()), "p99-ns")
}
