package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
)

// TestZtunnelProcess: node-2's ztunnel is the cmd/ztunnel binary (built
// with the race detector when this test is), a process in the node's
// namespace set up only through its flags and files, the api pod enrolled
// through its CNI socket. It answers on its readiness, admin and metrics
// ports; it lets the frontend through and refuses the intruder, naming
// the policy in its access log; it exits cleanly on SIGTERM, after which
// the api is unreachable: the capture stays, nothing leaks around it.
func TestZtunnelProcess(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("builds the ztunnel binary; e2e tests need root")
	}
	bin := buildZtunnel(t)
	m := startMeshFrom(t, localmesh.Config{
		Bundles: []string{writePolicy(t, allowFrontendToAPI)}, ProcessNodes: []string{"node-2"}, ZtunnelBinary: bin,
	}, false)
	proc := m.Processes["node-2"]
	if proc == nil || m.Ztunnels["node-2"] != nil {
		t.Fatalf("node-2's ztunnel: process %v, in this process %v", proc, m.Ztunnels["node-2"])
	}
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)
	ctx := context.Background()

	t.Run("endpoints in the node's namespace", func(t *testing.T) {
		if status, body, err := proc.Get(ctx, localmesh.ReadinessPort, "/healthz/ready"); err != nil || status != http.StatusOK {
			t.Errorf("readiness: %d %s, %v", status, body, err)
		}
		certs, err := proc.Certificates(ctx)
		if err != nil || len(certs) != 1 || certs[0].Identity != "spiffe://regomesh.test/ns/shop/sa/api" || certs[0].Error != "" {
			t.Errorf("config dump certificates = %+v, %v", certs, err)
		}
		pods, err := (&cni.Client{Socket: proc.CNISocket}).Snapshot(ctx)
		if err != nil || len(pods) != 1 || pods[0].Name != "api" || pods[0].Netns != api.Path {
			t.Errorf("CNI snapshot = %+v, %v", pods, err)
		}
	})
	t.Run("allowed: frontend to api", func(t *testing.T) {
		c, err := dialFrom(t, m.Pods["frontend"], target)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := roundTrip(c, "to the process"); err != nil || got != "to the process" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		c.Close()
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.SourceID == "spiffe://regomesh.test/ns/shop/sa/frontend"
		})
		if e.Decision != "allow" || e.Policy != "e2e/api" || e.Rule != "frontend-only" {
			t.Errorf("the process's inbound entry = %+v", e)
		}
		_, metrics, err := proc.Get(ctx, localmesh.MetricsPort, "/metrics")
		if err != nil || !strings.Contains(string(metrics), `istio_tcp_connections_opened_total{`) {
			t.Errorf("metrics after a connection (%v):\n%.1000s", err, metrics)
		}
	})
	t.Run("denied: intruder to api", func(t *testing.T) {
		e := m.intruderRefused(t, target)
		if e.Decision != "deny" || e.Flags != ztunnel.FlagDenied {
			t.Errorf("the process's deny entry = %+v", e)
		}
	})
	t.Run("clean exit on SIGTERM; then the api is unreachable", func(t *testing.T) {
		if err := proc.Stop(); err != nil {
			t.Fatal(err)
		}
		// Refused at once, not left hanging: the frontend's ztunnel finds
		// nothing on the api's HBONE port and says so.
		before := len(m.accessEntries(t))
		promptlyRefused(t, m.Pods["frontend"], target)
		e := m.waitForEntrySince(t, before, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "outbound" && e.SourceID == "spiffe://regomesh.test/ns/shop/sa/frontend"
		})
		if e.Flags != ztunnel.FlagConnect || e.Sent != 0 || e.Received != 0 {
			t.Errorf("outbound entry with the api's ztunnel stopped = %+v, want flag %s and no bytes", e, ztunnel.FlagConnect)
		}
	})
}

// buildZtunnel builds cmd/ztunnel for this test, with the race detector
// when the test runs with it.
func buildZtunnel(t *testing.T) string { return buildCommand(t, "ztunnel") }

// buildCommand builds cmd/<command> for this test, with the race detector
// when the test runs with it.
func buildCommand(t *testing.T, command string) string {
	t.Helper()
	var flags []string
	if raceEnabled {
		flags = append(flags, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := localmesh.Build(ctx, t.TempDir(), command, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
