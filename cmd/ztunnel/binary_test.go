package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/proctest"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testports"
	"github.com/regomesh/regomesh/spire/harness"
)

// TestBinaryServesAndDrains runs the real ztunnel binary against a real
// SPIRE agent: it becomes ready, serves metrics, readiness and a config
// dump without keys, and exits cleanly on SIGTERM.
func TestBinaryServesAndDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SPIRE")
	}
	server := harness.NewServer(t, harness.ServerConfig{})
	agent := server.NewAgent(t, harness.AgentConfig{})
	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	state := filepath.Join(dir, "state.yaml")
	os.WriteFile(state, []byte("workloads:\n- {name: web, namespace: shop, ips: [10.9.9.9]}\n"), 0o644)
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, ".manifest"), []byte(`{"revision": "r1", "roots": ["mesh/policies/t"]}`), 0o644)
	os.WriteFile(filepath.Join(bundle, "p.rego"), []byte("package mesh.policies.t.p\n\ndeny contains {\"policy\": \"t/p\", \"rule\": 0} if input.destination.port == 1\n"), 0o644)
	admin, metrics, ready := testports.Addr(t), testports.Addr(t), testports.Addr(t)
	cmd := exec.Command(bin, "--local-config", state, "--bundle", bundle, "--trust-domain", server.TrustDomain().Name(),
		"--spire-admin-socket", agent.AdminSocket(), "--cni-socket", filepath.Join(dir, "z.sock"),
		"--pods-file", filepath.Join(dir, "pods.json"), "--admin-addr", admin, "--metrics-addr", metrics,
		"--readiness-addr", ready, "--access-log", "off", "--drain-timeout", "2s")
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	proctest.WaitFor(t, "http://"+ready+"/healthz/ready", 200, &logs)
	if body := proctest.Fetch(t, "http://"+metrics+"/metrics"); !strings.Contains(body, "regomesh_policy_bundle_loads_total") {
		t.Errorf("metrics lack the policy engine's:\n%.500s", body)
	}
	dump := proctest.Fetch(t, "http://"+admin+"/config_dump")
	if !strings.Contains(dump, `"revisions"`) || !strings.Contains(dump, `"web"`) || strings.Contains(dump, "PRIVATE KEY") {
		t.Errorf("config dump:\n%s", dump)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit 10s after SIGTERM\n%s", logs.String())
	}
}
