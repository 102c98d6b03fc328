package policy

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	meshrego "github.com/regomesh/regomesh/rego"
)

// libraryModules parses regomesh's Rego library for activation.
func libraryModules(t *testing.T) map[string]*ast.Module {
	t.Helper()
	modules, err := meshrego.Modules()
	if err != nil {
		t.Fatal(err)
	}
	return modules
}

// readBundles reads bundles with ReadBundle, without verification keys.
func readBundles(t *testing.T, paths ...string) []*Bundle {
	t.Helper()
	bundles := make([]*Bundle, 0, len(paths))
	for _, p := range paths {
		b, err := ReadBundle(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, b)
	}
	return bundles
}

// readUnchecked reads a bundle as OPA does, skipping ReadBundle's checks,
// to prove activate makes them too.
func readUnchecked(t *testing.T, path string) *Bundle {
	t.Helper()
	src, err := statBundleSource(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, _, err := src.read(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	return &Bundle{Name: path, Revision: raw.Manifest.Revision, Roots: *raw.Manifest.Roots, raw: raw}
}

// decide evaluates the library's decision for input in a.
func decide(t *testing.T, a *activation, input map[string]any) map[string]any {
	t.Helper()
	rs, err := rego.New(
		rego.Compiler(a.compiler),
		rego.Store(a.store),
		rego.Query(meshrego.DecisionPath),
		rego.Input(input),
	).Eval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		t.Fatalf("got results %v, want one decision", rs)
	}
	decision, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		t.Fatalf("decision is %T, want an object", rs[0].Expressions[0].Value)
	}
	return decision
}

// decisionCase is one input and the verdict fields it must produce.
type decisionCase struct {
	input  map[string]any
	allow  bool
	policy string
	rule   string
}

func connection(sourceNS, destSA string, mtls bool) map[string]any {
	return map[string]any{
		"layer":       "l4",
		"source":      map[string]any{"namespace": sourceNS},
		"destination": map[string]any{"service_account": destSA, "port": 8080},
		"connection":  map[string]any{"mtls": mtls},
	}
}

func TestActivate(t *testing.T) {
	library := libraryModules(t)
	dbTarball := tarBundleDir(t, bundleFixture("db"))
	tests := []struct {
		name      string
		bundles   func(t *testing.T) []*Bundle
		revisions map[string]string
		data      map[string]string // JSON of documents in a.data, by "/"-joined path
		decisions []decisionCase
	}{
		{
			name:      "two bundles with disjoint roots, directory and tar.gz",
			bundles:   func(t *testing.T) []*Bundle { return readBundles(t, bundleFixture("web"), dbTarball) },
			revisions: map[string]string{bundleFixture("web"): "web-1", dbTarball: "db-7"},
			data:      map[string]string{"mesh/policies/web/config/namespaces": `["shop","checkout"]`},
			decisions: []decisionCase{
				{input: connection("shop", "web", true), allow: true, policy: "web/frontend", rule: "0"},
				{input: connection("billing", "web", true), allow: false, policy: "", rule: ""},
				{input: connection("shop", "db", false), allow: false, policy: "db/main", rule: "plaintext"},
				{input: connection("shop", "db", true), allow: true, policy: "", rule: ""},
			},
		},
		{
			name: "renamed bundles are keyed by their names",
			bundles: func(t *testing.T) []*Bundle {
				bundles := readBundles(t, bundleFixture("web"), bundleFixture("db"))
				bundles[0].Name, bundles[1].Name = "web", "db"
				return bundles
			},
			revisions: map[string]string{"web": "web-1", "db": "db-7"},
			data: map[string]string{
				"system/bundles/web/manifest/revision": `"web-1"`,
				"system/bundles/db/manifest/roots":     `["mesh/policies/db"]`,
			},
			decisions: []decisionCase{
				{input: connection("checkout", "web", true), allow: true, policy: "web/frontend", rule: "0"},
			},
		},
		{
			name:      "bundle without manifest alone",
			bundles:   func(t *testing.T) []*Bundle { return readBundles(t, bundleFixture("no-manifest")) },
			revisions: map[string]string{bundleFixture("no-manifest"): ""},
			decisions: []decisionCase{
				{input: connection("plain", "any", true), allow: true, policy: "plain/p", rule: "0"},
			},
		},
		{
			name:      "library only",
			bundles:   func(t *testing.T) []*Bundle { return nil },
			revisions: map[string]string{},
			decisions: []decisionCase{
				{input: connection("shop", "web", true), allow: true, policy: "", rule: ""},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := activate(context.Background(), tt.bundles(t), library)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := jsonString(t, a.revisions), jsonString(t, tt.revisions); got != want {
				t.Errorf("revisions = %s, want %s", got, want)
			}
			for path, want := range tt.data {
				if got := jsonAtPath(t, a.data, strings.Split(path, "/")); got != want {
					t.Errorf("data at %s = %s, want %s", path, got, want)
				}
			}
			for _, d := range tt.decisions {
				got := decide(t, a, d.input)
				if got["allow"] != d.allow || got["policy"] != d.policy || got["rule"] != d.rule {
					t.Errorf("decision for %v = %v, want allow %v policy %q rule %q", d.input, got, d.allow, d.policy, d.rule)
				}
			}
		})
	}
}

func jsonString(t *testing.T, v any) string {
	t.Helper()
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestActivateRejects(t *testing.T) {
	library := libraryModules(t)
	typeTarball := tarBundleDir(t, bundleFixture("type-error"))
	web, overlap := bundleFixture("web"), bundleFixture("overlap")
	tests := []struct {
		name    string
		bundles func(t *testing.T) []*Bundle
		text    []string
	}{
		{
			name:    "overlapping roots",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, web, overlap) },
			text: []string{"policy: bundles " + overlap + ", " + web + ": ", "detected overlapping roots",
				"mesh/policies overlaps mesh/policies/web", "must not overlap"},
		},
		{
			name:    "bundle without manifest next to another",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, bundleFixture("no-manifest"), web) },
			text:    []string{"specify empty root paths", "a bundle without roots owns everything"},
		},
		{
			name:    "two bundles with one name",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, web, web) },
			text:    []string{"policy: bundle " + web + ": two bundles of the set have this name; give every bundle a unique name"},
		},
		{
			name:    "type error in a directory names file:line",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, bundleFixture("type-error")) },
			text: []string{"policy: bundle " + bundleFixture("type-error") + ": ",
				bundleFixture("type-error") + "/typed.rego:5: rego_type_error", "fix the Rego at the file and line shown"},
		},
		{
			name:    "type error in a tar.gz names the archive's file:line and only its bundle",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, web, typeTarball) },
			text:    []string{"policy: bundle " + typeTarball + ": " + typeTarball + "/typed.rego:5: rego_type_error"},
		},
		{
			name:    "rule and data defining one document",
			bundles: func(t *testing.T) []*Bundle { return readBundles(t, bundleFixture("data-conflict")) },
			text:    []string{"policy: bundle " + bundleFixture("data-conflict") + ": ", "mesh/policies/c/p/allow"},
		},
		{
			name:    "package mesh.authz",
			bundles: func(t *testing.T) []*Bundle { return []*Bundle{readUnchecked(t, bundleFixture("library-package"))} },
			text:    []string{"override.rego:1: declares package mesh.authz", libraryHint},
		},
		{
			name: "module named like a library module",
			bundles: func(t *testing.T) []*Bundle {
				src := map[string]string{"/mesh/authz/authz.rego": "package mesh.policies.lib.p\n\nx := 1\n"}
				b := readBundles(t, writeOPABundle(t, "lib.tar.gz", buildOPABundle(t, "", []string{""}, nil, src)))
				b[0].Name = "regomesh/rego"
				return b
			},
			text: []string{"policy: bundle regomesh/rego: module regomesh/rego/mesh/authz/authz.rego has the name of a library module"},
		},
		{
			name:    "bundle not read with ReadBundle",
			bundles: func(t *testing.T) []*Bundle { return []*Bundle{{Name: "empty"}} },
			text:    []string{"bundle 0 of the set is empty or unnamed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := activate(context.Background(), tt.bundles(t), library)
			if a != nil {
				t.Error("got an activation with the error")
			}
			checkBundleErr(t, err, []error{ErrBundle}, []error{ErrSignature}, tt.text)
		})
	}
}
