package policy

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

const declaredEmptyManifest = `{"roots": ["mesh/policies/web"], "metadata": {"regomesh": {"empty": true}}}`

func TestReadBundleRefusesEmpty(t *testing.T) {
	manifestOnly := writeBundle(t, t.TempDir(), map[string]string{".manifest": `{"revision": "r1", "roots": ["mesh/policies/web"]}`})
	tests := []struct {
		name string
		path string
	}{
		{"empty directory", t.TempDir()},
		{"only a manifest", manifestOnly},
		{"only files OPA does not read", writeBundle(t, t.TempDir(), map[string]string{"README.md": "policies go here\n"})},
		{"tar.gz with only a manifest", tarBundleDir(t, manifestOnly)},
		{"manifest metadata that does not say empty", writeBundle(t, t.TempDir(), map[string]string{
			".manifest": `{"metadata": {"regomesh": {"empty": "yes"}, "empty": true}}`})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadBundle(tt.path, nil)
			checkBundleErr(t, err, []error{ErrBundle}, []error{ErrSignature},
				[]string{"policy: bundle " + tt.path + ": is empty: no Rego module", EmptyBundleMetadata, "docs/bundles.md"})
		})
	}
}

func TestReadBundleAcceptsDeclaredEmptyAndDataOnly(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
	}{
		{"declared empty", map[string]string{".manifest": declaredEmptyManifest}},
		{"data only", map[string]string{"data.json": `{"config": {"namespaces": ["shop"]}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ReadBundle(writeBundle(t, t.TempDir(), tt.files), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmptiedBundleDirKeepsLastGood empties a loaded bundle directory as a
// runtime reload would see it: the engine keeps deciding with the old set.
func TestEmptiedBundleDirKeepsLastGood(t *testing.T) {
	dir := copyBundleDir(t, shopBundle)
	e := loadEngine(t, withQuiet(Config{}), dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range entries {
		if err := os.RemoveAll(filepath.Join(dir, entry.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := ReadBundle(dir, nil); err == nil {
		err = e.Load(context.Background(), b)
		t.Fatalf("an emptied bundle directory was read (load: %v)", err)
	}
	if d, _ := e.Decide(context.Background(), apiToPostgres(5432)); !d.Allow || d.Policy != "shop/db" {
		t.Errorf("last good policy not in force: %+v", d)
	}
	if d, _ := e.Decide(context.Background(), apiToPostgres(5433)); d.Allow {
		t.Errorf("an emptied bundle turned a deny into %+v", d)
	}
}

func TestReloadWithoutPolicyKeepsLastGood(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var logs bytes.Buffer
	e := loadEngine(t, Config{Metrics: NewMetrics(reg), Logger: slog.New(slog.NewTextHandler(&logs, nil))}, shopBundle)
	gen := e.Generation()
	dataOnly := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/shop", "config"]}`,
		"data.json": `{"config": {"note": "policies moved"}}`,
	})
	err := e.Load(context.Background(), readBundles(t, dataOnly)...)
	checkBundleErr(t, err, []error{ErrBundle, ErrNoPolicy}, []error{ErrSignature},
		[]string{"policy: bundle " + dataOnly + ": has no policy package", "would replace the 2 in force, allowing all traffic", EmptyBundleMetadata})
	if e.Generation() != gen {
		t.Errorf("generation moved to %d", e.Generation())
	}
	if d, _ := e.Decide(context.Background(), apiToPostgres(5433)); d.Allow {
		t.Errorf("the refused set is in force: %+v", d)
	}
	if !strings.Contains(logs.String(), "BUNDLE SET REFUSED") {
		t.Errorf("the refusal was not logged loudly:\n%s", logs.String())
	}
	got := series(t, reg, "regomesh_policy_no_policy_refusals_total")
	if got["regomesh_policy_no_policy_refusals_total{}"] != 1 {
		t.Errorf("regomesh_policy_no_policy_refusals_total = %v, want 1", got)
	}

	// A bundle that says it is meant to be empty removes the policies.
	empty := writeBundle(t, t.TempDir(), map[string]string{".manifest": `{"roots": ["mesh/policies/shop"], "metadata": {"regomesh": {"empty": true}}}`})
	if err := e.Load(context.Background(), readBundles(t, empty)...); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.Decide(context.Background(), apiToPostgres(5433)); !d.Allow || d.Policy != "" {
		t.Errorf("declared-empty set: decision %+v, want allow by default", d)
	}
	// With no policy in force, a set without policy loads as before.
	if err := e.Load(context.Background(), readBundles(t, dataOnly)...); err != nil {
		t.Errorf("data-only set after an empty one: %v", err)
	}
}

func TestBundleWarnsMisspeltPoints(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/team", "mesh/other"]}`,
		"web.rego": `package mesh.policies.team.web

denies contains {"policy": "team/web", "rule": "r1"} if input.destination.port == 22

Allow if input.source.namespace == "shop"

allow if allowed

allowed if input.destination.port == 80

is_admin if input.source.service_account == "admin"

alow_scope contains {"policy": "team/web"} if true

deny contains {"policy": "team/web", "rule": "ok"} if input.destination.port == 23
`,
		"other.rego": "package mesh.other\n\ndenies contains 1 if true\n",
		"data.json":  `{"mesh": {"policies": {"team": {"data": {"denys": [{"policy": "team/data"}], "config": {}}}}}}`,
	})
	b, err := ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "web.rego")
	want := []string{
		file + ":3: rule denies in data.mesh.policies.team.web is not a contribution point, so the library ignores it: did you mean deny? (points: custom_deny, deny, allow, allow_scope, audit)",
		file + ":5: rule Allow in data.mesh.policies.team.web is not a contribution point, so the library ignores it: did you mean allow? (points: custom_deny, deny, allow, allow_scope, audit)",
		file + ":13: rule alow_scope in data.mesh.policies.team.web is not a contribution point, so the library ignores it: did you mean allow_scope? (points: custom_deny, deny, allow, allow_scope, audit)",
		dir + ": data.mesh.policies.team.data.denys is not a contribution point, so the library ignores it: did you mean deny? (points: custom_deny, deny, allow, allow_scope, audit)",
	}
	if got := b.Warnings(); !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	var logs bytes.Buffer
	e, err := NewEngine(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), strings.ReplaceAll(w, `"`, `\"`)) {
			t.Errorf("load did not warn %q:\n%s", w, logs.String())
		}
	}
}

func TestMisspeltPoint(t *testing.T) {
	tests := []struct {
		name, want string
	}{
		{"denies", "deny"}, {"Allow", "allow"}, {"DENY", "deny"}, {"allowed", "allow"}, {"denied", "deny"},
		{"dney", "deny"}, {"customdeny", "custom_deny"}, {"custom-deny", "custom_deny"}, {"allow_scopes", "allow_scope"},
		{"audits", "audit"},
		{"deny", ""}, {"allow_scope", ""}, {"is_admin", ""}, {"from_frontend", ""}, {"config", ""}, {"admins", ""},
	}
	for _, tt := range tests {
		got, ok := misspeltPoint(tt.name)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("misspeltPoint(%q) = %q, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
}
