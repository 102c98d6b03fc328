package cli

import (
	"strings"
	"testing"
)

// TestExplainDenyFromData: a deny that only bundle data contributes is
// explained as that deny, not as "no DENY matched".
func TestExplainDenyFromData(t *testing.T) {
	stdout, stderr, code := runBinary(t, "", "policy", "explain", "--bundle", "cli/testdata/bundles/data-deny", "-i", inputs+"api-to-postgres-allowed.json")
	if code != ExitDenied {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, ExitDenied, stdout, stderr)
	}
	for _, want := range []string{
		"DENY (l4): change freeze until Monday",
		"Why: a DENY rule matched (ops/freeze rule change-freeze); deny overrides allow",
		"deny  ops/freeze rule change-freeze  MATCHED (topdown)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not hold %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "no DENY matched") {
		t.Errorf("explain contradicts its verdict:\n%s", stdout)
	}
}
