package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/cli"
	"github.com/regomesh/regomesh/localmesh"
)

// denyAllToAPI is a candidate policy that would deny every connection to
// the api: its ALLOW policy applies and has no rule.
const denyAllToAPI = `package mesh.policies.e2e.api

allow_scope contains {"policy": "e2e/api"} if input.destination.labels.app == "api"
`

// TestShadowPolicyOnTheWire: node-2's ztunnel process enforces the
// frontend-only policy with a candidate --shadow-bundle that would deny
// the api to everyone. The frontend's connection still flows; the
// disagreement is counted in regomesh_policy_shadow_disagreements_total,
// naming the rule that lets it through today, and written to
// --shadow-log, which `regomesh policy replay` reads back as the flip the
// candidate would make.
func TestShadowPolicyOnTheWire(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("builds the ztunnel binary; e2e tests need root")
	}
	bin := buildZtunnel(t)
	candidate := writePolicy(t, denyAllToAPI)
	shadowLog := filepath.Join(t.TempDir(), "shadow.jsonl")
	m := startMeshFrom(t, localmesh.Config{
		Bundles: []string{writePolicy(t, allowFrontendToAPI)}, ProcessNodes: []string{"node-2"}, ZtunnelBinary: bin,
		ZtunnelFlags: []string{"--shadow-bundle", candidate, "--shadow-log", shadowLog},
	}, false)
	proc := m.Processes["node-2"]
	api := m.Pods["api"]
	echoServer(t, api, 8080)

	c, err := dialFrom(t, m.Pods["frontend"], fmt.Sprintf("%s:8080", api.IP))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(c, "still flows"); err != nil || got != "still flows" {
		t.Fatalf("echo through the shadowed policy = %q, %v", got, err)
	}
	c.Close()

	const series = `regomesh_policy_shadow_disagreements_total{layer="l4",policy="e2e/api",rule="frontend-only",shadow_policy="",shadow_rule=""} 1`
	var metrics []byte
	poll(t, "the disagreement counted", func() bool {
		_, metrics, _ = proc.Get(context.Background(), localmesh.MetricsPort, "/metrics")
		return bytes.Contains(metrics, []byte(series))
	})
	var line map[string]any
	poll(t, "the disagreement in --shadow-log", func() bool {
		raw, _ := os.ReadFile(shadowLog)
		sc := bufio.NewScanner(bytes.NewReader(raw))
		return sc.Scan() && json.Unmarshal(sc.Bytes(), &line) == nil
	})
	result, _ := line["result"].(map[string]any)
	shadow, _ := line["shadow"].(map[string]any)
	if result["allow"] != true || result["rule"] != "frontend-only" || shadow["allow"] != false {
		t.Errorf("--shadow-log line = %v, want the allowed connection and the candidate's deny", line)
	}

	var out, errOut bytes.Buffer
	code := cli.Run([]string{"policy", "replay", "--log", shadowLog, "--bundle", candidate, "-o", "json"}, &out, &errOut)
	var report struct {
		Flipped int `json:"flipped"`
		Flips   []struct {
			Direction, Before string
		} `json:"flips"`
	}
	if err := json.Unmarshal(out.Bytes(), &report); err != nil || code != cli.ExitDenied || report.Flipped < 1 ||
		report.Flips[0].Direction != "allow->deny" || !strings.Contains(report.Flips[0].Before, "e2e/api") {
		t.Errorf("replay of --shadow-log against the candidate: exit %d, %s%s (%v); want the allow->deny flip", code, out.String(), errOut.String(), err)
	}
	if status, _, err := proc.Get(context.Background(), localmesh.ReadinessPort, "/healthz/ready"); err != nil || status != http.StatusOK {
		t.Errorf("readiness with a shadow set: %d, %v", status, err)
	}
}

// poll waits, with a generous bound, for what only shows by asking again:
// a metric of another process, a file it flushes.
func poll(t *testing.T, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30s", what)
		}
		<-tick.C
	}
}
