package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regomesh/regomesh/internal/syncbuf"
)

const (
	shopBundle   = "testdata/engine/shop"
	shopV2Bundle = "testdata/engine/shop-v2"
)

func apiToPostgres(port int) Input {
	return Input{
		Layer:       L4,
		Source:      Source{Principal: "spiffe://td/ns/shop/sa/api", IP: "10.0.0.7", Port: 40000},
		Destination: Destination{IP: "10.0.1.9", Port: port, Namespace: "shop", Workload: "postgres-0", ServiceAccount: "db", Labels: map[string]string{"app": "postgres"}},
		Connection:  Connection{MTLS: true},
	}
}

func toAdmin(principal string) Input {
	return Input{
		Layer:       L7,
		Source:      Source{Principal: principal, IP: "10.0.0.8"},
		Destination: Destination{IP: "10.0.1.3", Port: 8080, Namespace: "shop", Workload: "web-1", Labels: map[string]string{"app": "web"}},
		Connection:  Connection{MTLS: true},
		Request:     &Request{Method: "GET", Path: "/catalog/%2e%2e/admin/users?x=1", Host: "web"},
	}
}

func TestDecide(t *testing.T) {
	fromBadNet := apiToPostgres(5432)
	fromBadNet.Source.IP = "192.0.2.10"
	plaintext := apiToPostgres(5432)
	plaintext.Source = Source{IP: "10.0.0.50"}
	plaintext.Connection.MTLS = false
	cases := []struct {
		name string
		in   Input
		want Verdict
	}{
		{"allow rule matches", apiToPostgres(5432),
			Verdict{Allow: true, Policy: "shop/db", Rule: "api-only", Reason: "allowed by ALLOW policy"}},
		{"allow policy selects, no rule matches", apiToPostgres(5433),
			Verdict{Reason: "no ALLOW policy matched; selecting the destination: shop/db"}},
		{"plaintext source has no principal", plaintext,
			Verdict{Reason: "no ALLOW policy matched; selecting the destination: shop/db"}},
		{"deny overrides allow", fromBadNet,
			Verdict{Policy: "shop/admin", Rule: "1", Reason: "denied by DENY policy"}},
		{"l7 deny with its own reason, on the normalized path", toAdmin("spiffe://td/ns/shop/sa/checkout"),
			Verdict{Policy: "shop/admin", Rule: "0", Reason: "only the frontend may call /admin"}},
		{"l7 no policy selects", toAdmin("spiffe://td/ns/shop/sa/frontend"),
			Verdict{Allow: true, Reason: "no ALLOW policy selects the destination"}},
	}
	for _, mode := range []struct {
		name string
		cfg  Config
	}{{"native", Config{}}, {"topdown", Config{Topdown: true}}} {
		e := loadEngine(t, withQuiet(mode.cfg), shopBundle)
		for _, tc := range cases {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				d, err := e.Decide(context.Background(), tc.in)
				if err != nil {
					t.Fatal(err)
				}
				if d.Verdict != tc.want {
					t.Errorf("verdict = %+v\nwant      %+v", d.Verdict, tc.want)
				}
			})
		}
	}
}

func withQuiet(cfg Config) Config {
	cfg.Logger = quietLogger()
	return cfg
}

func TestDecideAudit(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	d, err := e.Decide(context.Background(), apiToPostgres(5432))
	if err != nil {
		t.Fatal(err)
	}
	want := []PolicyRule{{Policy: "shop/admin", Rule: "watch-db"}}
	if !d.Allow || fmt.Sprint(d.Audit) != fmt.Sprint(want) {
		t.Errorf("decision = %+v, want allow with audit %v", d, want)
	}
}

func TestNoPolicyLoadedDenies(t *testing.T) {
	e, err := NewEngine(withQuiet(Config{}))
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Decide(context.Background(), apiToPostgres(5432))
	if err != nil || d.Allow || d.Reason != ReasonNoPolicy {
		t.Errorf("decision = %+v, %v; want deny %q", d, err, ReasonNoPolicy)
	}
	if e.Generation() != 0 {
		t.Errorf("generation = %d before any load", e.Generation())
	}
}

func TestBadBundleKeepsLastGood(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := loadEngine(t, withQuiet(Config{Metrics: NewMetrics(reg)}), shopBundle)
	gen := e.Generation()
	cases := []struct {
		name  string
		files map[string]string
		want  []string // in the error text
	}{
		{"parse error", map[string]string{"p.rego": "package mesh.policies.bad.p\n\ndeny contains x if {\n"},
			[]string{"p.rego:", "rego_parse_error"}},
		{"unsafe variable", map[string]string{"p.rego": "package mesh.policies.bad.p\n\ndeny contains x if {\n\ty == 1\n}\n"},
			[]string{"p.rego:3", "unsafe"}},
		{"type error", map[string]string{"p.rego": "package mesh.policies.bad.p\n\ndeny contains {\"policy\": \"p\"} if {\n\tcount(5) > 1\n}\n"},
			[]string{"p.rego:4", "rego_type_error"}},
		{"contribution in the wrong package", map[string]string{"p.rego": "package mesh.policies.bad\n\ndeny contains {\"policy\": \"p\"} if input.a\n"},
			[]string{"p.rego:3", "mesh.policies.<owner>.<name>"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{".manifest": `{"roots": ["mesh/policies/bad"]}`}
			for k, v := range tc.files {
				files[k] = v
			}
			dir := writeBundle(t, t.TempDir(), files)
			b, err := ReadBundle(dir, nil)
			if err == nil {
				err = e.Load(context.Background(), b)
			}
			if !errors.Is(err, ErrBundle) {
				t.Fatalf("error = %v, want ErrBundle", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if e.Generation() != gen {
				t.Errorf("generation moved to %d after a rejected bundle", e.Generation())
			}
			d, _ := e.Decide(context.Background(), apiToPostgres(5432))
			if !d.Allow || d.Policy != "shop/db" {
				t.Errorf("last good policy not in force: %+v", d)
			}
		})
	}
	loads := series(t, reg, "regomesh_policy_bundle_loads_total")
	if loads[`regomesh_policy_bundle_loads_total{result=success}`] != 1 || loads[`regomesh_policy_bundle_loads_total{result=failure}`] < 1 {
		t.Errorf("bundle load metrics = %v", loads)
	}
}

func TestSignedBundleThroughEngine(t *testing.T) {
	keys := newRSAKeys(t)
	dir := copyBundleDir(t, shopBundle)
	signBundleDir(t, dir, keys.private, "RS256", "shop-key")
	verify := &Verification{Keys: map[string]VerificationKey{"shop-key": {Algorithm: "RS256", Key: keys.public}}}
	b, err := ReadBundle(dir, verify)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEngine(withQuiet(Config{}))
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Decide(context.Background(), apiToPostgres(5432)); !d.Allow {
		t.Errorf("signed bundle: %+v", d)
	}
	tampered := filepath.Join(dir, "mesh/policies/shop/db.rego")
	src, _ := os.ReadFile(tampered)
	os.WriteFile(tampered, bytes.Replace(src, []byte("5432"), []byte("5433"), 1), 0o644)
	if _, err := ReadBundle(dir, verify); !errors.Is(err, ErrSignature) {
		t.Errorf("tampered bundle: error = %v, want ErrSignature", err)
	}
}

func TestEvaluationErrorDenies(t *testing.T) {
	// Two definitions of a complete rule that disagree: OPA's eval_conflict_error.
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/conflict"]}`,
		"p.rego": `package mesh.policies.conflict.p

deny := true if input.destination.port == 1
deny := false if input.destination.port == 1
`})
	e := loadEngine(t, withQuiet(Config{}), dir)
	d, err := e.Decide(context.Background(), apiToPostgres(1))
	if err == nil || d.Allow || !strings.Contains(d.Reason, "conflict") {
		t.Errorf("decision = %+v, err = %v; want a deny naming the conflict", d, err)
	}
	if d, err := e.Decide(context.Background(), apiToPostgres(2)); err != nil || !d.Allow {
		t.Errorf("unaffected input: %+v %v", d, err)
	}
}

func TestUndefinedDecisionDenies(t *testing.T) {
	d, err := decodeDecision(nil)
	if !errors.Is(err, ErrUndefined) || d.Allow || d.Reason != ReasonUndefined {
		t.Errorf("decodeDecision(nil) = %+v, %v", d, err)
	}
}

func TestDecideRejectsInvalidInput(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Input)
		want   string
	}{
		{"no layer", func(in *Input) { in.Layer = "" }, "input.layer: required"},
		{"unknown layer", func(in *Input) { in.Layer = "l5" }, `input.layer: "l5"`},
		{"request at l4", func(in *Input) { in.Request = &Request{} }, "input.request: must be absent"},
		{"no request at l7", func(in *Input) { in.Layer = L7 }, "input.request: required at layer l7"},
		{"bad source ip", func(in *Input) { in.Source.IP = "10.0.0" }, "input.source.ip"},
		{"bad destination ip", func(in *Input) { in.Destination.IP = "x" }, "input.destination.ip"},
		{"bad remote ip", func(in *Input) { in.Source.RemoteIP = "x" }, "input.source.remote_ip"},
		{"bad port", func(in *Input) { in.Destination.Port = 70000 }, "input.destination.port"},
		{"principal not spiffe", func(in *Input) { in.Source.Principal = "td/ns/a/sa/b" }, "input.source.principal"},
		{"namespace disagrees", func(in *Input) { in.Source.Namespace = "other" }, "input.source.namespace"},
		{"identity without principal", func(in *Input) { in.Source = Source{Namespace: "shop"} }, "set without input.source.principal"},
	}
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := apiToPostgres(5432)
			tc.mutate(&in)
			d, err := e.Decide(context.Background(), in)
			if !errors.Is(err, ErrInvalidInput) || d.Allow || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decision %+v, error %v; want deny with ErrInvalidInput naming %q", d, err, tc.want)
			}
		})
	}
}

func TestDecideDerivesIdentityAndLeavesCallerAlone(t *testing.T) {
	in := toAdmin("spiffe://td/ns/shop/sa/checkout")
	in.Request.Headers = map[string]string{"X-Team": "red"}
	if err := in.Prepare(); err != nil {
		t.Fatal(err)
	}
	want := Source{Principal: "spiffe://td/ns/shop/sa/checkout", TrustDomain: "td", Namespace: "shop",
		ServiceAccount: "checkout", IP: "10.0.0.8", RemoteIP: "10.0.0.8"}
	if in.Source != want {
		t.Errorf("source = %+v\nwant     %+v", in.Source, want)
	}
	if in.Request.URLPath != "/admin/users" || in.Request.Headers["x-team"] != "red" {
		t.Errorf("request = %+v", in.Request)
	}
	caller := toAdmin("spiffe://td/ns/shop/sa/checkout")
	caller.Request.Headers = map[string]string{"X-Team": "red"}
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	e.Decide(context.Background(), caller)
	if caller.Request.URLPath != "" || caller.Request.Headers["X-Team"] != "red" {
		t.Errorf("Decide changed the caller's request: %+v", caller.Request)
	}
}

func TestReloadReplacesPolicyAndCache(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	ctx := context.Background()
	if d, _ := e.Decide(ctx, apiToPostgres(5432)); !d.Allow {
		t.Fatalf("v1: %+v", d)
	}
	gen := e.Generation()
	b, err := ReadBundle(shopV2Bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(ctx, b); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Decide(ctx, apiToPostgres(5432)); d.Allow {
		t.Errorf("v2 still allows (stale cache?): %+v", d)
	}
	if e.Generation() == gen || e.Revisions()[shopV2Bundle] != "shop-2" {
		t.Errorf("generation %d (was %d), revisions %v", e.Generation(), gen, e.Revisions())
	}
}

func TestCacheKeysOnObservedFields(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	g := e.current.Load()
	if !g.cacheable || g.cacheSpec.fields&scalarBits["input.source.ip"] == 0 || g.cacheSpec.fields&scalarBits["input.source.port"] != 0 {
		t.Fatalf("cache spec = %+v, want source.ip observed and source.port not", g.cacheSpec)
	}
	ctx := context.Background()
	in := apiToPostgres(5432)
	first, _ := e.Decide(ctx, in)
	in.Source.Port = 41000 // unobserved: a hit
	in.Source.IP = "192.0.2.9"
	second, _ := e.Decide(ctx, in) // observed: must be re-decided
	if !first.Allow || second.Allow {
		t.Errorf("first %+v, second %+v: the source IP must be part of the key", first, second)
	}
}

func TestNondeterministicPolicyIsNotCached(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/clock"]}`,
		"p.rego": `package mesh.policies.clock.p

deny contains {"policy": "clock/p", "rule": 0} if time.now_ns() < 0
`})
	e := loadEngine(t, withQuiet(Config{}), dir)
	if g := e.current.Load(); g.cacheable || g.cache.Load() != nil {
		t.Error("a policy reading the clock must not be cached")
	}
}

// WithTime sets what time.now_ns returns, in Decide, Explain and Trace
// alike; without it the clock decides.
func TestWithTimeSetsTheClock(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/clock"]}`,
		"p.rego": `package mesh.policies.clock.p

allow_scope contains {"policy": "clock/p"} if input.destination.labels.app == "postgres"

allow contains {"policy": "clock/p", "rule": "office-hours"} if {
	[hour, _, _] := time.clock([time.now_ns(), "UTC"])
	hour >= 9
	hour < 17
}
`})
	e := loadEngine(t, withQuiet(Config{}), dir)
	at := func(hhmm string) context.Context {
		ts, err := time.Parse(time.RFC3339, "2026-11-25T"+hhmm+":00Z")
		if err != nil {
			t.Fatal(err)
		}
		return WithTime(context.Background(), ts)
	}
	for _, c := range []struct {
		at    string
		allow bool
	}{{"09:00", true}, {"16:59", true}, {"17:00", false}, {"03:30", false}} {
		d, err := e.Decide(at(c.at), apiToPostgres(5432))
		if err != nil || d.Allow != c.allow {
			t.Errorf("Decide at %s: %+v, %v; want allow=%v", c.at, d, err, c.allow)
		}
		x, err := e.Explain(at(c.at), apiToPostgres(5432))
		if err != nil || x.Decision.Allow != c.allow {
			t.Errorf("Explain at %s: %+v, %v; want allow=%v", c.at, x.Decision, err, c.allow)
		}
		var trace bytes.Buffer
		if err := e.Trace(at(c.at), apiToPostgres(5432), &trace); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(trace.String(), `"allow": true`); got != c.allow {
			t.Errorf("Trace at %s: allow in the trace %v, want %v", c.at, got, c.allow)
		}
	}
}

func TestInvalidateDropsCache(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	ctx := context.Background()
	e.Decide(ctx, apiToPostgres(5432))
	before := e.current.Load().cache.Load()
	e.Invalidate()
	if after := e.current.Load().cache.Load(); after == before || after == nil {
		t.Error("Invalidate did not replace the cache")
	}
}

func TestShadowReportsDisagreements(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	metrics := NewMetrics(reg)
	var logBuf syncbuf.Buffer
	dl, err := NewDecisionLogger(&logBuf, DecisionLogConfig{}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	e := loadEngine(t, withQuiet(Config{Metrics: metrics, DecisionLog: dl}), shopBundle)
	shadow, err := ReadBundle(shopV2Bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadShadow(context.Background(), shadow); err != nil {
		t.Fatal(err)
	}
	d, err := e.Decide(context.Background(), apiToPostgres(5432))
	if err != nil || !d.Allow {
		t.Fatalf("enforced decision changed by the shadow set: %+v %v", d, err)
	}
	e.Decide(context.Background(), apiToPostgres(5433)) // both deny: no disagreement
	got := series(t, reg, "regomesh_policy_shadow_disagreements_total")
	if got[`regomesh_policy_shadow_disagreements_total{layer=l4,policy=shop/db,rule=api-only,shadow_policy=,shadow_rule=}`] != 1 {
		t.Errorf("disagreements = %v, want 1 at l4, allowed by shop/db rule api-only in force, denied by no rule in the shadow set", got)
	}
	if err := dl.Close(); err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(logBuf.Lines()[0]), &first); err != nil {
		t.Fatal(err)
	}
	shadowResult, _ := first["shadow"].(map[string]any)
	if first["result"].(map[string]any)["allow"] != true || shadowResult["allow"] != false {
		t.Errorf("decision log line = %v", first)
	}
	if first["bundles"].(map[string]any)[shopBundle].(map[string]any)["revision"] != "shop-1" {
		t.Errorf("decision log bundles = %v", first["bundles"])
	}
	if err := e.LoadShadow(context.Background()); err != nil || e.shadow.Load() != nil {
		t.Errorf("LoadShadow() did not stop shadowing: %v", err)
	}
}

func TestDecisionMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := loadEngine(t, withQuiet(Config{Metrics: NewMetrics(reg)}), shopBundle)
	ctx := context.Background()
	e.Decide(ctx, apiToPostgres(5432))
	e.Decide(ctx, apiToPostgres(5432)) // cached: still counted
	e.Decide(ctx, apiToPostgres(5433))
	got := series(t, reg, "regomesh_policy_decisions_total")
	want := map[string]float64{
		`regomesh_policy_decisions_total{decision=allow,layer=l4,policy=shop/db}`: 2,
		`regomesh_policy_decisions_total{decision=deny,layer=l4,policy=}`:         1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// TestConcurrentDecideDuringLoads runs under -race in make test.
func TestConcurrentDecideDuringLoads(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	v1, _ := ReadBundle(shopBundle, nil)
	v2, _ := ReadBundle(shopV2Bundle, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := e.Decide(ctx, apiToPostgres(5432))
				if err != nil || d.Policy != "shop/db" && d.Reason != "no ALLOW policy matched; selecting the destination: shop/db" {
					t.Errorf("decision during reload: %+v %v", d, err)
					return
				}
			}
		})
	}
	for i := range 10 {
		if err := e.Load(ctx, []*Bundle{v1, v2}[i%2]); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestChangedFiresOnEveryLoad(t *testing.T) {
	e, _ := NewEngine(withQuiet(Config{}))
	first := e.Changed()
	b, _ := ReadBundle(shopBundle, nil)
	select {
	case <-first:
		t.Fatal("Changed fired before any load")
	default:
	}
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	<-first // the first load
	second := e.Changed()
	bad := writeBundle(t, t.TempDir(), map[string]string{"p.rego": "package mesh.policies.x.y\n\ndeny contains"})
	if rb, err := ReadBundle(bad, nil); err == nil {
		e.Load(context.Background(), rb)
	}
	select {
	case <-second:
		t.Fatal("Changed fired on a rejected load")
	default:
	}
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	<-second
}

func TestIterationIsNative(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/jwt"]}`,
		"p.rego": `package mesh.policies.jwt.p

deny contains {"policy": "jwt/p", "rule": "no-admin-audience"} if {
	input.layer == "l7"
	not admin_audience
}

admin_audience if {
	some a in input.request.auth.audiences
	startswith(a, "admin-")
	not a == "admin-legacy"
}
`})
	e := loadEngine(t, withQuiet(Config{}), dir)
	if notes := e.current.Load().prog.notes; len(notes) != 0 {
		t.Fatalf("iteration fell back to topdown: %v", notes)
	}
	cases := []struct {
		audiences []string
		allow     bool
	}{
		{[]string{"web", "admin-ui"}, true},
		{[]string{"admin-legacy"}, false},
		{[]string{"admin-legacy", "admin-new"}, true},
		{nil, false},
	}
	for _, tc := range cases {
		in := toAdmin("spiffe://td/ns/shop/sa/frontend")
		in.Request.Auth = &Auth{Audiences: tc.audiences}
		d, err := e.Decide(context.Background(), in)
		if err != nil || d.Allow != tc.allow {
			t.Errorf("audiences %v: %+v, %v; want allow=%v", tc.audiences, d.Verdict, err, tc.allow)
		}
	}
}

func TestCacheHitsStillRefuseInvalidInput(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	ctx := context.Background()
	if d, err := e.Decide(ctx, apiToPostgres(5432)); err != nil || !d.Allow {
		t.Fatalf("first decision: %+v %v", d, err)
	}
	for name, mutate := range map[string]func(*Input){
		"source port out of range":       func(in *Input) { in.Source.Port = 70000 },
		"request at l4":                  func(in *Input) { in.Request = &Request{} },
		"namespace disagrees":            func(in *Input) { in.Source.Namespace = "other" },
		"unparsable destination address": func(in *Input) { in.Destination.IP = "10.0.1" },
	} {
		in := apiToPostgres(5432)
		mutate(&in)
		if d, err := e.Decide(ctx, in); !errors.Is(err, ErrInvalidInput) || d.Allow {
			t.Errorf("%s: %+v, %v; want a refused input even with the valid one cached", name, d.Verdict, err)
		}
	}
	// Derived fields given or not, the same input hits the same decision.
	in := apiToPostgres(5432)
	in.Source.Namespace, in.Source.ServiceAccount, in.Source.TrustDomain = "shop", "api", "td"
	if d, err := e.Decide(ctx, in); err != nil || !d.Allow {
		t.Errorf("with derived fields spelled out: %+v %v", d, err)
	}
}
