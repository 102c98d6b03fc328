package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTranslateRefusesEmptyBundle: a bundle of no AuthorizationPolicy
// would replace the policies in force with none.
func TestTranslateRefusesEmptyBundle(t *testing.T) {
	onlyConfigMap := t.TempDir()
	if err := os.WriteFile(filepath.Join(onlyConfigMap, "cm.yaml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: shop}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir string
		stderr    []string
	}{
		{"empty directory", t.TempDir(), []string{"no AuthorizationPolicy or PeerAuthentication in ", "would allow all traffic"}},
		{"only other kinds", onlyConfigMap, []string{"no AuthorizationPolicy or PeerAuthentication in " + onlyConfigMap, "skipped: ", "ConfigMap"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "bundle")
			stdout, stderr, code := runBinary(t, "", "policy", "translate", "-o", "bundle", "--out", out, tt.dir)
			if code != ExitError {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, ExitError, stdout, stderr)
			}
			for _, want := range tt.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q does not mention %q", stderr, want)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("--out %s was written (stat: %v)", out, err)
			}
			_, stderr, code = runBinary(t, "", "policy", "check", "--policies", tt.dir, "-i", inputs+"frontend-to-postgres-denied.json")
			if code != ExitError || !strings.Contains(stderr, "--policies: no AuthorizationPolicy or PeerAuthentication in ") {
				t.Errorf("check --policies %s: exit %d, stderr %q; want exit 1 naming the empty input", tt.dir, code, stderr)
			}
		})
	}
}

// TestCheckWarnsMisspeltPoints: a rule the library ignores is a warning
// with its file:line, not silence.
func TestCheckWarnsMisspeltPoints(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		".manifest": `{"roots": ["mesh/policies/team"]}`,
		"db.rego":   "package mesh.policies.team.db\n\ndenies contains {\"policy\": \"team/db\", \"rule\": \"r\"} if input.destination.port == 5432\n",
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stdout, stderr, code := runBinary(t, "", "policy", "check", "--bundle", dir, "-i", inputs+"api-to-postgres-allowed.json")
	want := "warning: " + filepath.Join(dir, "db.rego") + ":3: rule denies in data.mesh.policies.team.db is not a contribution point, so the library ignores it: did you mean deny?"
	if code != ExitAllowed || !strings.Contains(stdout, want) {
		t.Errorf("exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", code, ExitAllowed, want, stdout, stderr)
	}
}
