package main

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver/bundleservertest"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/proctest"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testports"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestBinaryWithController runs the real ztunnel binary with --controller
// alone against the controller's stream server and bundle server, all
// with SVIDs from a real SPIRE agent: ztunnel's is its node's
// (spiffe://<td>/regomesh/ztunnel/node-a), and the test's controller
// presents the same one (one user, one registration), named with
// --controller-identity. ztunnel downloads the signed mesh bundle over
// mutual TLS with its SVID and verifies it with --verification-key,
// becomes ready with it and the streamed state, takes a change of each
// without a restart, and ACKs both; a ztunnel whose SVID is another
// node's does not start.
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
	bundles, bundlesURL, verificationKey := bundleservertest.Start(t, srv, td, source, source)
	// publish serves the bundle of a policy admitting namespace from, and
	// announces its revision on the stream.
	publish := func(from string) string {
		b := proctest.AllowNamespaceBundle(t, from)
		bundles.Update(&controller.Update{Bundle: b})
		srv.UpdateBundles(bundles.Revisions())
		return b.Revision
	}
	v1 := publish("front")

	dir := t.TempDir()
	bin := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	keyFile := filepath.Join(dir, "verification.pem")
	os.WriteFile(keyFile, verificationKey, 0o644)
	start := func(node string) (*exec.Cmd, *syncbuf.Buffer, string, string) {
		admin, ready := testports.Addr(t), testports.Addr(t)
		cmd := exec.Command(bin, "--controller", l.Addr().String(), "--controller-identity", ztunnelID.String(), "--controller-timeout", "15s",
			"--controller-bundles", bundlesURL, "--verification-key", keyFile,
			"--node", node, "--trust-domain", td.Name(),
			"--spire-admin-socket", agent.AdminSocket(), "--spire-workload-socket", agent.WorkloadSocket(),
			"--cni-socket", filepath.Join(dir, node+".sock"), "--pods-file", filepath.Join(dir, node+".json"),
			"--admin-addr", admin, "--metrics-addr", testports.Addr(t), "--readiness-addr", ready, "--access-log", "off", "--drain-timeout", "2s")
		logs := &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, logs, admin, ready
	}

	cmd, logs, admin, ready := start("node-a")
	defer cmd.Process.Kill()
	proctest.WaitFor(t, "http://"+ready+"/healthz/ready", 200, logs)
	if dump := proctest.Fetch(t, "http://"+admin+"/config_dump"); !strings.Contains(dump, `"web"`) || !strings.Contains(dump, `"mesh": "`+v1+`"`) {
		t.Fatalf("config dump lacks the streamed workload or the controller's bundle:\n%s", dump)
	}
	srv.Update(mustSnapshot(t, "web", "api"))
	v2 := publish("back")
	deadline := time.Now().Add(30 * time.Second)
	for dump := ""; !strings.Contains(dump, `"api"`) || !strings.Contains(dump, `"mesh": "`+v2+`"`); dump = proctest.Fetch(t, "http://"+admin+"/config_dump") {
		if time.Now().After(deadline) {
			t.Fatalf("the new workload or bundle revision never reached ztunnel:\n%s\n%s", dump, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		st, ok := srv.Proxy(ztunnelID.String())
		if ok && st.AckedVersion == srv.Version() && st.Node == "node-a" && st.Bundles[wire.MeshBundle] == v2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ACK of version %s and bundle revision %s: %+v", srv.Version(), v2, st)
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
