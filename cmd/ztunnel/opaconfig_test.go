package main

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/regomesh/regomesh/internal/proctest"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testports"
	"github.com/regomesh/regomesh/spire/harness"
)

// TestBinaryOPAConfig runs the real ztunnel binary with --opa-config
// beside a --bundle: while the bundle server has no bundle, ztunnel is
// not ready and says which bundle it waits for; once the server has it,
// ztunnel downloads it with OPA's protocol, becomes ready, and the
// bundle's revision is in force with the local one.
func TestBinaryOPAConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SPIRE")
	}
	var served atomic.Pointer[[]byte]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := served.Load()
		if body == nil || r.URL.Path != "/bundles/authz" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", `"remote-1"`)
		if r.Header.Get("If-None-Match") == `"remote-1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Write(*body)
	}))
	defer srv.Close()

	server := harness.NewServer(t, harness.ServerConfig{})
	agent := server.NewAgent(t, harness.AgentConfig{})
	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	state := filepath.Join(dir, "state.yaml")
	os.WriteFile(state, []byte("workloads:\n- {name: web, namespace: shop, ips: [10.9.9.9]}\n"), 0o644)
	local := filepath.Join(dir, "bundle")
	os.MkdirAll(local, 0o755)
	os.WriteFile(filepath.Join(local, ".manifest"), []byte(`{"revision": "local-1", "roots": ["mesh/policies/t"]}`), 0o644)
	os.WriteFile(filepath.Join(local, "p.rego"), []byte("package mesh.policies.t.p\n\ndeny contains {\"policy\": \"t/p\", \"rule\": 0} if input.destination.port == 1\n"), 0o644)
	opaConfig := filepath.Join(dir, "opa.yaml")
	os.WriteFile(opaConfig, []byte(`services:
  acmecorp:
    url: `+srv.URL+`
bundles:
  authz:
    service: acmecorp
    polling: {min_delay_seconds: 1, max_delay_seconds: 1}
`), 0o644)
	admin, metrics, ready := testports.Addr(t), testports.Addr(t), testports.Addr(t)
	cmd := exec.Command(bin, "--local-config", state, "--bundle", local, "--opa-config", opaConfig, "--trust-domain", server.TrustDomain().Name(),
		"--spire-admin-socket", agent.AdminSocket(), "--cni-socket", filepath.Join(dir, "z.sock"),
		"--pods-file", filepath.Join(dir, "pods.json"), "--admin-addr", admin, "--metrics-addr", metrics,
		"--readiness-addr", ready, "--access-log", "off", "--drain-timeout", "2s")
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })

	// No bundle on the server yet: up, failing downloads, not ready.
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, metrics, `regomesh_policy_remote_bundle_failures_total{bundle="authz",reason="download"}`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no failed download counted; ztunnel log:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get("http://" + ready + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "no good copy yet of bundle authz") {
		t.Errorf("readiness before the bundle: %d %q, want 503 naming bundle authz", resp.StatusCode, body)
	}
	if v := metricValue(t, metrics, "regomesh_policy_remote_bundles_ready"); v != 0 {
		t.Errorf("regomesh_policy_remote_bundles_ready = %v before the bundle, want 0", v)
	}

	// The server gets the bundle: ztunnel downloads it and is ready.
	served.Store(ptr(remoteBundle(t)))
	proctest.WaitFor(t, "http://"+ready+"/healthz/ready", 200, &logs)
	for series, want := range map[string]float64{
		"regomesh_policy_remote_bundles_ready":                                   1,
		`regomesh_policy_remote_bundle_activations_total{bundle="authz"}`:        1,
		`regomesh_policy_bundle_info{bundle="authz",revision="remote-1"}`:        1,
		`regomesh_policy_bundle_info{bundle="` + local + `",revision="local-1"}`: 1,
	} {
		if got := metricValue(t, metrics, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if dump := proctest.Fetch(t, "http://"+admin+"/config_dump"); !strings.Contains(dump, `"authz": "remote-1"`) || !strings.Contains(dump, `"local-1"`) {
		t.Errorf("config dump lacks the revisions in force:\n%s", dump)
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

// remoteBundle is a bundle tarball, as opa build writes it, that denies
// port 2.
func remoteBundle(t *testing.T) []byte {
	t.Helper()
	roots := []string{"mesh/policies/remote"}
	src := "package mesh.policies.remote.p\n\ndeny contains {\"policy\": \"remote/p\", \"rule\": 0} if input.destination.port == 2\n"
	m, err := ast.ParseModuleWithOpts("/p.rego", src, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	b := bundle.Bundle{Manifest: bundle.Manifest{Revision: "remote-1", Roots: &roots}, Data: map[string]any{},
		Modules: []bundle.ModuleFile{{URL: "/p.rego", Path: "/p.rego", Raw: []byte(src), Parsed: m}}}
	if err := bundle.NewWriter(&buf).DisableFormat(true).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ptr[T any](v T) *T { return &v }

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	return b.String()
}

// metricValue reads one series from the metrics endpoint; -1 when absent.
func metricValue(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return -1
}
