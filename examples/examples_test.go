// Package examples_test proves that the example bundle loads as an OPA
// bundle next to the library, and that every document in inputs/ gets the
// decision its name promises.
package examples_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	opa "github.com/open-policy-agent/opa/v1/rego"

	"github.com/regomesh/regomesh/rego"
)

type verdict struct {
	Allow  bool   `json:"allow"`
	Policy string `json:"policy"`
	Rule   string `json:"rule"`
}

var (
	inWindow  = time.Date(2025, 6, 2, 10, 0, 0, 0, time.UTC)
	outWindow = time.Date(2025, 6, 2, 20, 0, 0, 0, time.UTC)
)

// inputCase is the decision one file of inputs/ must get. Unless at says
// otherwise the decision must not depend on the clock: it is checked both
// inside and outside the change window.
type inputCase struct {
	input string
	at    []time.Time
	want  verdict
}

// cases lists every file in inputs/.
var cases = []inputCase{
	{input: "api-to-postgres-allowed.json", want: verdict{true, "examples/db", "api-only"}},
	{input: "api-to-postgres-wrong-port-denied.json", want: verdict{false, "", ""}},
	{input: "frontend-to-postgres-denied.json", want: verdict{false, "", ""}},
	{input: "plaintext-to-postgres-denied.json", want: verdict{false, "", ""}},
	{input: "frontend-catalog-allowed.json", want: verdict{true, "", ""}},
	{input: "checkout-admin-denied.json", want: verdict{false, "examples/admin", "admin-only-frontend"}},
	{input: "checkout-admin-dotdot-denied.json", want: verdict{false, "examples/admin", "admin-only-frontend"}},
	{input: "frontend-admin-change-window.json", at: []time.Time{inWindow}, want: verdict{true, "", ""}},
	{input: "frontend-admin-change-window.json", at: []time.Time{outWindow}, want: verdict{false, "examples/admin", "change-window"}},
}

func TestInputs(t *testing.T) {
	query := prepare(t)
	for _, tc := range cases {
		at := tc.at
		if at == nil {
			at = []time.Time{inWindow, outWindow}
		}
		for _, now := range at {
			t.Run(tc.input+"@"+now.Format("15:04"), func(t *testing.T) {
				got := decide(t, query, filepath.Join("inputs", tc.input), now)
				if got != tc.want {
					t.Errorf("decision = %+v, want %+v", got, tc.want)
				}
			})
		}
	}
}

func TestEveryInputHasACase(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("inputs", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if !slices.ContainsFunc(cases, func(c inputCase) bool { return c.input == name }) {
			t.Errorf("%s has no case in TestInputs", f)
		}
	}
}

func TestBundleManifest(t *testing.T) {
	b := readBundle(t)
	if b.Manifest.Revision != "examples-1" {
		t.Errorf("revision = %q, want examples-1", b.Manifest.Revision)
	}
	if roots := *b.Manifest.Roots; !slices.Equal(roots, []string{"mesh/policies/examples"}) {
		t.Errorf("roots = %q, want [mesh/policies/examples]", roots)
	}
	for _, m := range b.Modules {
		if strings.HasSuffix(m.Path, "_test.rego") {
			t.Errorf("bundle includes test file %s", m.Path)
		}
	}
}

// prepare compiles the library and the example bundle, as the engine would
// load them, into a query for the decision.
func prepare(t *testing.T) opa.PreparedEvalQuery {
	t.Helper()
	b := readBundle(t)
	opts := []func(*opa.Rego){
		opa.Query(rego.DecisionPath),
		opa.ParsedBundle("examples", &b),
		opa.StrictBuiltinErrors(true),
	}
	modules, err := rego.Modules()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range modules {
		opts = append(opts, opa.ParsedModule(m))
	}
	query, err := opa.New(opts...).PrepareForEval(context.Background())
	if err != nil {
		t.Fatalf("prepare %s: %v", rego.DecisionPath, err)
	}
	return query
}

// readBundle reads bundle/ as an OPA bundle, exactly as OPA would (its
// tests live in tests/, outside the bundle and its roots).
func readBundle(t *testing.T) bundle.Bundle {
	t.Helper()
	b, err := bundle.NewCustomReader(bundle.NewDirectoryLoader("bundle")).Read()
	if err != nil {
		t.Fatalf("read bundle/: %v", err)
	}
	return b
}

func decide(t *testing.T, query opa.PreparedEvalQuery, file string, now time.Time) verdict {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var input any
	if err := json.Unmarshal(raw, &input); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	rs, err := query.Eval(context.Background(), opa.EvalInput(input), opa.EvalTime(now))
	if err != nil {
		t.Fatalf("%s: eval: %v", file, err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		t.Fatalf("%s: %s is undefined", file, rego.DecisionPath)
	}
	out, err := json.Marshal(rs[0].Expressions[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	var v verdict
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%s: decision %s: %v", file, out, err)
	}
	return v
}
