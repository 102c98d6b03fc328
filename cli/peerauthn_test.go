package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const peerPolicies = "cli/testdata/istio/peerauthn"

// TestPeerAuthentication: check and explain take PeerAuthentications with
// AuthorizationPolicies, from one stream or several files; STRICT refuses
// plaintext and names itself, a workload-level PERMISSIVE lets it through,
// mTLS is unaffected; translate writes them, validate checks them.
func TestPeerAuthentication(t *testing.T) {
	plaintext := `{"layer": "l4", "source": {"ip": "10.9.0.1"}, "destination": {"namespace": "shop", "port": 8080, "labels": {"app": "%s"}}, "connection": {"mtls": false}}`
	mtls := `{"layer": "l4", "source": {"principal": "spiffe://cluster.local/ns/shop/sa/frontend", "ip": "10.9.0.1"}, "destination": {"namespace": "shop", "port": 8080, "labels": {"app": "web"}}, "connection": {"mtls": true}}`
	cases := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		stdout []string
	}{
		{name: "check STRICT refuses plaintext", args: []string{"policy", "check", "--policies", peerPolicies, "-i", "-"},
			stdin: strings.ReplaceAll(plaintext, "%s", "web"), code: ExitDenied,
			stdout: []string{"DENY (l4): STRICT mTLS: plaintext refused by PeerAuthentication shop/strict", "shop/strict", "mtls"}},
		{name: "check mTLS unaffected", args: []string{"policy", "check", "--policies", peerPolicies, "-i", "-"},
			stdin: mtls, code: ExitAllowed, stdout: []string{"ALLOW (l4)"}},
		{name: "check workload PERMISSIVE", args: []string{"policy", "check", "--policies", peerPolicies + "/shop.yaml", "--policies", peerPolicies + "/legacy-api.yaml", "-i", "-"},
			stdin: strings.ReplaceAll(plaintext, "%s", "legacy-api"), code: ExitAllowed, stdout: []string{"ALLOW (l4)"}},
		{name: "explain STRICT", args: []string{"policy", "explain", "--policies", peerPolicies, "-i", "-"},
			stdin: strings.ReplaceAll(plaintext, "%s", "web"), code: ExitDenied,
			stdout: []string{
				"DENY (l4): STRICT mTLS: plaintext refused by PeerAuthentication shop/strict",
				`mesh.policies.istio_peerauthentication["shop.strict"]`,
				"deny  shop/strict rule mtls  MATCHED  translated:mesh/policies/istio_peerauthentication/shop/strict.rego:",
				"Why: a DENY rule matched (shop/strict rule mtls); deny overrides allow",
			}},
		{name: "validate", args: []string{"policy", "validate", peerPolicies}, code: ExitAllowed, stdout: []string{"3 policies valid"}},
		{name: "validate invalid", args: []string{"policy", "validate", "cli/testdata/istio/peerauthn-invalid.yaml"}, code: ExitError,
			stdout: []string{"cli/testdata/istio/peerauthn-invalid.yaml:9: shop/namespace-ports: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"}},
		{name: "translate", args: []string{"policy", "translate", peerPolicies}, code: ExitAllowed,
			stdout: []string{"# mesh/policies/istio_peerauthentication/shop/strict.rego", `package mesh.policies.istio_peerauthentication["shop.legacy-api"]`, "not workload_level"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runBinary(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout does not hold %q:\n%s", want, stdout)
				}
			}
		})
	}
}

// TestTranslateWritesPeerAuthentications: the bundle holds the modules
// under their own root, which the manifest lists, and a bundle of
// PeerAuthentications alone is a bundle.
func TestTranslateWritesPeerAuthentications(t *testing.T) {
	out := filepath.Join(t.TempDir(), "bundle")
	if _, stderr, code := runBinary(t, "", "policy", "translate", "-o", "bundle", "--out", out, peerPolicies+"/legacy-api.yaml"); code != ExitAllowed {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	manifest, err := os.ReadFile(filepath.Join(out, ".manifest"))
	if err != nil || !strings.Contains(string(manifest), `"mesh/policies/istio_peerauthentication"`) {
		t.Errorf("manifest %s (%v) does not list the PeerAuthentication root", manifest, err)
	}
	if _, err := os.Stat(filepath.Join(out, "mesh/policies/istio_peerauthentication/shop/legacy-api.rego")); err != nil {
		t.Error(err)
	}
}
