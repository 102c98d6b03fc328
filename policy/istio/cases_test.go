package istio_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

// A case is AuthorizationPolicy YAML, an input document and the decision
// the real engine must reach at each layer listed (native program and
// topdown both). The input has no layer: the runner sets it, and drops
// the request at L4.
type testCase struct {
	Name     string                   `json:"name"`
	Options  caseOptions              `json:"options"`
	Policies string                   `json:"policies"`
	Input    map[string]any           `json:"input"`
	Want     map[string]*wantDecision `json:"want"`
	// WantWarnings, when set, is every translation warning, in order.
	WantWarnings []string `json:"want_warnings"`
	// Topdown says the translation needs topdown for some package (wildcards
	// against list-valued claims); otherwise every package must be native.
	Topdown bool `json:"topdown"`
}

type caseOptions struct {
	RootNamespace      string   `json:"root_namespace"`
	TrustDomain        string   `json:"trust_domain"`
	TrustDomainAliases []string `json:"trust_domain_aliases"`
	ClusterDomain      string   `json:"cluster_domain"`
	Waypoint           string   `json:"waypoint"`
}

type wantDecision struct {
	Allow  bool          `json:"allow"`
	Policy string        `json:"policy"`
	Reason string        `json:"reason"` // checked when set
	Rule   any           `json:"rule"`   // an index, or a string
	Audit  []wantRule    `json:"audit"`
	DryRun *wantDecision `json:"dry_run"`
}

type wantRule struct {
	Policy string `json:"policy"`
	Rule   any    `json:"rule"`
}

func (w *wantDecision) check(t *testing.T, d policy.Decision) {
	t.Helper()
	if d.Allow != w.Allow || d.Policy != w.Policy || d.Rule != ruleText(w.Rule) || w.Reason != "" && d.Reason != w.Reason {
		t.Errorf("decision %s\nwant allow=%v policy=%q rule=%q reason=%q", describe(d), w.Allow, w.Policy, ruleText(w.Rule), w.Reason)
	}
	var audit []wantRule
	for _, a := range d.Audit {
		audit = append(audit, wantRule{a.Policy, a.Rule})
	}
	var want []wantRule
	for _, a := range w.Audit {
		want = append(want, wantRule{a.Policy, ruleText(a.Rule)})
	}
	if !slices.Equal(audit, want) {
		t.Errorf("audit %v, want %v", audit, want)
	}
	switch {
	case w.DryRun == nil && d.DryRun != nil:
		t.Errorf("unexpected dry-run verdict %+v", *d.DryRun)
	case w.DryRun != nil && d.DryRun == nil:
		t.Errorf("no dry-run verdict, want %+v", *w.DryRun)
	case w.DryRun != nil:
		dry := *w.DryRun
		dry.check(t, policy.Decision{Verdict: *d.DryRun})
	}
}

func ruleText(r any) string {
	if r == nil {
		return ""
	}
	return fmt.Sprint(r)
}

func readCases(t *testing.T) map[string][]testCase {
	t.Helper()
	files, err := filepath.Glob("testdata/cases/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	out := map[string][]testCase{}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var cases []testCase
		if err := yaml.UnmarshalStrict(src, &cases); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out[strings.TrimSuffix(filepath.Base(file), ".yaml")] = cases
	}
	return out
}

func TestCases(t *testing.T) {
	total := 0
	var ran, byPackage atomic.Int64
	for file, cases := range readCases(t) {
		for _, c := range cases {
			total++
			t.Run(file+"/"+c.Name, func(t *testing.T) {
				t.Parallel()
				ran.Add(1)
				if runCase(t, file, c) {
					byPackage.Add(1)
				}
			})
		}
	}
	if total < 120 {
		t.Errorf("%d cases; the table must keep at least 120", total)
	}
	t.Cleanup(func() { // after the parallel cases
		t.Logf("%d of %d cases ran; %d loaded package by package", ran.Load(), total, byPackage.Load())
		if int(ran.Load()) == total && byPackage.Load() < int64(total)/2 {
			t.Errorf("%d of %d cases were loaded package by package; the cases must keep proving that path too", byPackage.Load(), total)
		}
	})
}

// runCase runs one case and reports whether the native engine loaded its
// translation package by package.
func runCase(t *testing.T, file string, c testCase) bool {
	if len(c.Want) == 0 {
		t.Fatal("case has no want")
	}
	opts := istio.Options{
		RootNamespace: c.Options.RootNamespace, TrustDomain: c.Options.TrustDomain,
		TrustDomainAliases: c.Options.TrustDomainAliases, Waypoint: c.Options.Waypoint,
		ClusterDomain: c.Options.ClusterDomain,
		Providers:     testProviders,
	}
	tr, err := translateYAML(t, file+".yaml:"+c.Name, c.Policies, opts)
	if err != nil {
		t.Fatalf("translate: %v", err)
	}
	strictCompile(t, tr)
	if c.WantWarnings != nil {
		var got []string
		for _, w := range tr.Warnings {
			got = append(got, w.String())
		}
		if !slices.Equal(got, c.WantWarnings) {
			t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.WantWarnings, "\n"))
		}
	}
	e := loadEngines(t, tr)
	if !c.Topdown && len(e.fallback) > 0 {
		t.Errorf("packages left to topdown: %v", e.fallback)
	}
	if c.Topdown && len(e.fallback) == 0 {
		t.Errorf("case says topdown, but every package is native")
	}
	for layer, want := range c.Want {
		in := caseInput(t, c.Input, layer)
		want.check(t, e.decide(t, in))
	}
	return e.byPackage
}

// caseInput is the case's input document at layer, decoded strictly as the
// engine's callers would.
func caseInput(t *testing.T, doc map[string]any, layer string) policy.Input {
	t.Helper()
	m := map[string]any{"layer": layer}
	for k, v := range doc {
		if k != "request" || layer == "l7" {
			m[k] = v
		}
	}
	if layer == "l7" && m["request"] == nil {
		m["request"] = map[string]any{"method": "GET", "path": "/"}
	}
	raw, _ := json.Marshal(m)
	in, err := policy.DecodeInput(raw)
	if err != nil {
		t.Fatalf("input at %s: %v", layer, err)
	}
	return in
}
