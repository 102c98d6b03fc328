package opabundles

import (
	"encoding/pem"
	"os"
	"strings"
	"testing"
)

// TestDocsExample: the OPA configuration docs/bundles.md shows parses,
// and means what the page says (with a real CA file in place of the path
// it names, which ParseConfig reads).
func TestDocsExample(t *testing.T) {
	page, err := os.ReadFile("../../docs/bundles.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(page), "## Downloading bundles from a bundle server")
	_, block, ok2 := strings.Cut(section, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/bundles.md has no yaml block under its Downloading bundles section")
	}
	ca := writeFile(t, t.TempDir(), "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: newTestCA(t).cert.Raw}))
	cfg, err := ParseConfig([]byte(strings.ReplaceAll(block, "/etc/regomesh/bundle-server-ca.pem", ca)))
	if err != nil {
		t.Fatalf("the example does not parse: %v\n%s", err, block)
	}
	authz, team := cfg.Bundles["authz"], cfg.Bundles["team-policies"]
	if authz == nil || team == nil || len(cfg.Bundles) != 2 {
		t.Fatalf("bundles %v, want authz and team-policies", cfg.Bundles)
	}
	if authz.Service != "acmecorp" || authz.Signing == nil || !authz.Signing.SignatureRequired() || authz.Signing.KeyID != "global_key" {
		t.Errorf("authz: service %q signing %+v, want acmecorp with signatures required by global_key", authz.Service, authz.Signing)
	}
	if team.Service != "internal" || team.Polling.LongPollingTimeoutSeconds == nil || *team.Polling.LongPollingTimeoutSeconds != 60 || team.Signing.SignatureRequired() {
		t.Errorf("team-policies: service %q polling %+v, want internal, long polling 60 s, signature optional (keys, no signing block)", team.Service, team.Polling)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], `bundle "team-policies": keys are configured but the bundle has no signing block`) {
		t.Errorf("warnings %q, want the one about team-policies' optional signature", cfg.Warnings)
	}
}
