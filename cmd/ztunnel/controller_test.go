package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestBinaryWithController runs the real ztunnel binary with --controller
// against the controller's stream server, both with SVIDs from a real
// SPIRE agent: ztunnel's is its node's
// (spiffe://<td>/regomesh/ztunnel/node-a), and the test's controller
// presents the same one (one user, one registration), named with
// --controller-identity. ztunnel becomes ready with the streamed state,
// takes a change without a restart, and ACKs it; a ztunnel whose SVID is
// another node's does not start.
func TestBinaryWithController(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SPIRE")
	}
	server := harness.NewServer(t, harness.ServerConfig{})
	td := server.TrustDomain()
	ztunnelID, err := wire.ZtunnelID(td, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	agent := server.NewAgent(t, harness.AgentConfig{Delegate: ztunnelID})
	source, err := workloadapi.NewX509Source(t.Context(), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()

	srv := xds.New(xds.Config{TrustDomain: td})
	srv.Update(mustSnapshot(t, "web"))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := xds.NewGRPCServer(srv, source, source)
	served := make(chan struct{})
	go func() { defer close(served); gs.Serve(l) }()
	defer func() { gs.Stop(); <-served; srv.Wait() }()

	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, ".manifest"), []byte(`{"revision": "r1", "roots": ["mesh/policies/t"]}`), 0o644)
	os.WriteFile(filepath.Join(bundle, "p.rego"), []byte("package mesh.policies.t.p\n\ndeny contains {\"policy\": \"t/p\", \"rule\": 0} if input.destination.port == 1\n"), 0o644)
	start := func(node string) (*exec.Cmd, *syncLog, string, string) {
		admin, ready := freeAddr(t), freeAddr(t)
		cmd := exec.Command(bin, "--controller", l.Addr().String(), "--controller-identity", ztunnelID.String(), "--controller-timeout", "15s",
			"--node", node, "--bundle", bundle, "--trust-domain", td.Name(),
			"--spire-admin-socket", agent.AdminSocket(), "--spire-workload-socket", agent.WorkloadSocket(),
			"--cni-socket", filepath.Join(dir, node+".sock"), "--pods-file", filepath.Join(dir, node+".json"),
			"--admin-addr", admin, "--metrics-addr", freeAddr(t), "--readiness-addr", ready, "--access-log", "off", "--drain-timeout", "2s")
		logs := &syncLog{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, logs, admin, ready
	}

	cmd, logs, admin, ready := start("node-a")
	defer cmd.Process.Kill()
	waitFor(t, "http://"+ready+"/healthz/ready", 200, &logs.Buffer)
	if dump := fetch(t, "http://"+admin+"/config_dump"); !strings.Contains(dump, `"web"`) {
		t.Fatalf("config dump lacks the streamed workload:\n%s", dump)
	}
	srv.Update(mustSnapshot(t, "web", "api"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(fetch(t, "http://"+admin+"/config_dump"), `"api"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the new workload never reached ztunnel\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		st, ok := srv.Proxy(ztunnelID.String())
		if ok && st.AckedVersion == srv.Version() && st.Node == "node-a" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ACK of version %s: %+v", srv.Version(), st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
	}

	// node-a's SVID, claiming node-b: refused before it streams anything.
	other, logs, _, _ := start("node-b")
	defer other.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- other.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(logs.String(), "spiffe://"+td.Name()+"/regomesh/ztunnel/node-b") {
			t.Errorf("a ztunnel with node-a's SVID started as node-b (exit %v):\n%s", err, logs.String())
		}
	case <-ctx.Done():
		other.Process.Kill()
		<-done
		t.Fatalf("a ztunnel with node-a's SVID kept running as node-b:\n%s", logs.String())
	}
}

func mustSnapshot(t *testing.T, names ...string) *state.Snapshot {
	var ws []*state.Workload
	for i, name := range names {
		ws = append(ws, &state.Workload{
			UID: "shop/" + name, Name: name, Namespace: "shop", ServiceAccount: "default", Node: "node-a", Protocol: state.HBONE,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 9, 9, byte(i + 1)})},
		})
	}
	s, err := state.NewSnapshot(ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// syncLog is a process's output, written by exec's copying goroutine and
// read by the test.
type syncLog struct {
	mu sync.Mutex
	bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Buffer.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Buffer.String()
}
