package cli

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// binary is the regomesh command built once for the exec tests.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "regomesh-cli")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "regomesh")
	build := exec.Command("go", "build", "-o", binary, "../cmd/regomesh")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("build regomesh: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runBinary runs the built command from the repository root, so paths in
// its output are the ones a user types.
func runBinary(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = ".."
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

const (
	examples = "examples/bundle"
	inputs   = "examples/inputs/"
)

func TestCommands(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		golden bool   // compare stdout with testdata/golden/<name>.txt
		stderr string // a substring stderr must hold
		stdout string // a substring stdout must hold
	}{
		{name: "check-allowed-text", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "api-to-postgres-allowed.json"}, code: ExitAllowed, golden: true},
		{name: "check-allowed-json", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "api-to-postgres-allowed.json", "-o", "json"}, code: ExitAllowed, golden: true},
		{name: "check-denied-json", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "checkout-admin-denied.json", "-o", "json"}, code: ExitDenied, golden: true},
		{name: "check-denied-yaml", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "frontend-to-postgres-denied.json", "-o", "yaml"}, code: ExitDenied, golden: true},
		{name: "check-flags", args: []string{"policy", "check", "--bundle", examples, "--from", "spiffe://cluster.local/ns/shop/sa/api",
			"--to", "shop/postgres-0", "--workloads", "cli/testdata/workloads.yaml", "--port", "5432", "-o", "json"}, code: ExitAllowed, golden: true},
		{name: "check-flags-l7", args: []string{"policy", "check", "--bundle", examples, "--from", "spiffe://cluster.local/ns/shop/sa/checkout",
			"--to", "shop/web", "--port", "8080", "--method", "GET", "--path", "/%61dmin/x?y", "--header", "X-Trace=1"}, code: ExitDenied, golden: true},
		{name: "check-stdin", args: []string{"policy", "check", "--bundle", examples, "-i", "-"}, stdin: "layer: l4\ndestination: {port: 5432, labels: {app: postgres}}\n", code: ExitDenied, golden: true},
		{name: "explain-denied", args: []string{"policy", "explain", "--bundle", examples, "-i", inputs + "frontend-to-postgres-denied.json"}, code: ExitDenied, golden: true},
		{name: "explain-allowed", args: []string{"policy", "explain", "--bundle", examples, "-i", inputs + "api-to-postgres-allowed.json"}, code: ExitAllowed, golden: true},
		{name: "test-pass", args: []string{"policy", "test", "examples/bundle", "examples/tests"}, code: ExitAllowed, golden: true},
		{name: "replay-flips", args: []string{"policy", "replay", "--log", "cli/testdata/decisions.jsonl", "--bundle", "cli/testdata/bundles/db-5433"}, code: ExitDenied, golden: true},
		{name: "replay-flips-json", args: []string{"policy", "replay", "--log", "cli/testdata/decisions.jsonl", "--bundle", "cli/testdata/bundles/db-5433", "-o", "json"}, code: ExitDenied, golden: true},
		{name: "replay-unchanged", args: []string{"policy", "replay", "--log", "cli/testdata/decisions.jsonl", "--bundle", examples}, code: ExitAllowed, golden: true},

		{name: "istio-check-allowed", args: []string{"policy", "check", "--policies", "examples/istio", "-i", inputs + "api-to-postgres-allowed.json", "-o", "json"}, code: ExitAllowed, golden: true},
		{name: "istio-explain-denied", args: []string{"policy", "explain", "--policies", "examples/istio", "-i", inputs + "frontend-to-postgres-denied.json"}, code: ExitDenied, golden: true},
		{name: "istio-translate", args: []string{"policy", "translate", "examples/istio"}, code: ExitAllowed, golden: true, stderr: "ztunnel does not support HTTP attributes"},
		{name: "istio-validate", args: []string{"policy", "validate", "examples/istio"}, code: ExitAllowed, golden: true},
		{name: "istio-validate-invalid", args: []string{"policy", "validate", "cli/testdata/istio/invalid.yaml"}, code: ExitError, golden: true, stderr: "1 of 1 policies are invalid"},
		{name: "check-jwt-claims", args: []string{"policy", "check", "--bundle", "cli/testdata/jwt-bundle", "--from", "spiffe://cluster.local/ns/shop/sa/frontend",
			"--to", "shop/web", "--port", "8080", "--path", "/admin/users", "--jwt-claims", "cli/testdata/claims.json", "-o", "json"}, code: ExitAllowed, golden: true},
		{name: "check-no-jwt", args: []string{"policy", "check", "--bundle", "cli/testdata/jwt-bundle", "--from", "spiffe://cluster.local/ns/shop/sa/frontend",
			"--to", "shop/web", "--port", "8080", "--path", "/admin/users"}, code: ExitDenied, golden: true},
		{name: "test-coverage", args: []string{"policy", "test", "--coverage", "examples/bundle", "examples/tests"}, code: ExitAllowed, stdout: `"coverage":`},
		{name: "test-fail", args: []string{"policy", "test", "cli/testdata/failing-tests"}, code: ExitDenied},
		{name: "input-unknown-field", args: []string{"policy", "check", "--bundle", examples, "-i", "-"}, stdin: `{"layer": "l4", "source": {"principle": "x"}}`, code: ExitError, stderr: `unknown field "principle"`},
		{name: "input-bad-type", args: []string{"policy", "check", "--bundle", examples, "-i", "-"}, stdin: `{"layer": "l4", "destination": {"port": "80"}}`, code: ExitError, stderr: "input.destination.port"},
		{name: "no-input", args: []string{"policy", "check", "--bundle", examples}, code: ExitError, stderr: "no input"},
		{name: "no-bundle", args: []string{"policy", "check", "-i", inputs + "api-to-postgres-allowed.json"}, code: ExitError, stderr: "no policy given"},
		{name: "missing-bundle", args: []string{"policy", "check", "--bundle", "nope", "-i", inputs + "api-to-postgres-allowed.json"}, code: ExitError, stderr: "nope"},
		{name: "unknown-workload", args: []string{"policy", "check", "--bundle", examples, "--to", "shop/x", "--workloads", "cli/testdata/workloads.yaml"}, code: ExitError, stderr: "no such workload"},
		{name: "bad-output", args: []string{"policy", "check", "--bundle", examples, "-o", "xml"}, code: ExitError, stderr: `"xml" is not text, json or yaml`},
		{name: "check-now-in-window", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "frontend-admin-change-window.json", "--now", "2026-11-25T10:00:00Z"}, code: ExitAllowed, stdout: "ALLOW (l7)"},
		{name: "check-now-after-hours", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "frontend-admin-change-window.json", "--now", "2026-11-25T18:30:00+01:00"}, code: ExitDenied, stdout: "change-window"},
		{name: "explain-now-in-window", args: []string{"policy", "explain", "--bundle", examples, "-i", inputs + "frontend-admin-change-window.json", "--now", "2026-11-25T16:59:59Z"}, code: ExitAllowed, stdout: "ALLOW (l7)"},
		{name: "check-bad-now", args: []string{"policy", "check", "--bundle", examples, "-i", inputs + "frontend-admin-change-window.json", "--now", "10:00"}, code: ExitError, stderr: "RFC 3339"},
		{name: "replay-at-logged-time", args: []string{"policy", "replay", "--log", "cli/testdata/decision-after-hours.jsonl", "--bundle", examples}, code: ExitDenied, stdout: "1 allow->deny"},
		{name: "replay-not-a-log", args: []string{"policy", "replay", "--log", "-", "--bundle", examples}, stdin: "hello\n", code: ExitError, stderr: "line 1: not a decision-log line"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runBinary(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			if !strings.Contains(stdout, tc.stdout) {
				t.Errorf("stdout does not hold %q:\n%s", tc.stdout, stdout)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.stderr)
			}
			if tc.golden {
				checkGolden(t, tc.name, stdout)
			}
		})
	}
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".txt")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cli -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test ./cli -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestCheckJSONIsOneObject(t *testing.T) {
	stdout, _, _ := runBinary(t, "", "policy", "check", "--bundle", examples, "-i", inputs+"checkout-admin-denied.json", "-o", "json")
	dec := jsonDecoder(stdout)
	var first map[string]any
	if err := dec.Decode(&first); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"allow", "policy", "rule", "reason", "warnings"} {
		if _, ok := first[key]; !ok {
			t.Errorf("check -o json lacks %q: %v", key, first)
		}
	}
	if dec.More() {
		t.Error("check -o json printed more than one JSON value")
	}
}
