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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver/bundleservertest"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/proctest"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testports"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestBinaryWithController runs the real waypoint binary with
// --controller and --gateway alone against the controller's stream and
// bundle servers, all with one SVID from a real SPIRE agent (the
// waypoint's, which the test's controller presents too): the waypoint
// downloads its Gateway's signed bundle over mutual TLS, verifies it with
// --verification-key, becomes ready, and takes a new revision without a
// restart, which the stream announced and the waypoint ACKed.
func TestBinaryWithController(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SPIRE")
	}
	server := harness.NewServer(t, harness.ServerConfig{})
	td := server.TrustDomain()
	wpID := spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "waypoint")
	agent := server.NewAgent(t, harness.AgentConfig{Delegate: wpID})
	source, err := workloadapi.NewX509Source(t.Context(), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()

	// The state names the waypoint's workload as web's waypoint, so both
	// servers accept its SVID as waypoint shop/waypoint.
	stream := xds.New(xds.Config{TrustDomain: td})
	snap, err := state.NewSnapshot([]*state.Workload{
		{UID: "shop/waypoint", Name: "waypoint", Namespace: "shop", ServiceAccount: "waypoint", TrustDomain: td.Name(), Node: "node-a",
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}, Protocol: state.HBONE},
		{UID: "shop/web", Name: "web", Namespace: "shop", ServiceAccount: "web", TrustDomain: td.Name(), Node: "node-a",
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.9")}, Protocol: state.HBONE, Waypoint: "shop/waypoint"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stream.Update(snap)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := xds.NewGRPCServer(stream, source, source)
	served := testgo.Go(t, func(context.Context) { gs.Serve(l) })
	defer func() { gs.Stop(); <-served; stream.Wait() }()
	bundles, bundlesURL, key := bundleservertest.Start(t, stream, td, source, source)
	publish := func(from string) string {
		b := proctest.AllowNamespaceBundle(t, from)
		bundles.Update(&controller.Update{Bundle: b, WaypointBundles: map[string]*controller.Bundle{"shop/waypoint": b}})
		stream.UpdateBundles(bundles.Revisions())
		return b.Revision
	}
	v1 := publish("front")

	dir := t.TempDir()
	bin := filepath.Join(dir, "waypoint")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	keyFile := filepath.Join(dir, "verification.pem")
	os.WriteFile(keyFile, key, 0o644)
	admin, ready := testports.Addr(t), testports.Addr(t)
	cmd := exec.Command(bin, "--controller", l.Addr().String(), "--controller-identity", wpID.String(), "--controller-timeout", "15s",
		"--gateway", "shop/waypoint", "--controller-bundles", bundlesURL, "--verification-key", keyFile, "--trust-domain", td.Name(),
		"--spire-workload-socket", agent.WorkloadSocket(), "--hbone-addr", testports.Addr(t), "--admin-addr", admin,
		"--metrics-addr", testports.Addr(t), "--readiness-addr", ready, "--drain-timeout", "2s")
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := testgo.Go(t, func(context.Context) { cmd.Wait() })
	defer func() { cmd.Process.Kill(); <-exited }()
	proctest.WaitFor(t, "http://"+ready+"/healthz/ready", 200, &logs)
	if dump := proctest.Fetch(t, "http://"+admin+"/config_dump"); !strings.Contains(dump, `"waypoint/shop/waypoint": "`+v1+`"`) {
		t.Fatalf("config dump lacks the Gateway's bundle at %s:\n%s", v1, dump)
	}
	v2 := publish("back")
	deadline := time.Now().Add(30 * time.Second)
	for dump := ""; !strings.Contains(dump, `"waypoint/shop/waypoint": "`+v2+`"`); dump = proctest.Fetch(t, "http://"+admin+"/config_dump") {
		if time.Now().After(deadline) {
			t.Fatalf("revision %s never reached the waypoint:\n%s\n%s", v2, dump, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		st, ok := stream.Proxy(wpID.String())
		if ok && st.Bundles[wire.WaypointBundle("shop/waypoint")] == v2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream's announcement of %s never ACKed: %+v", v2, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit 10s after SIGTERM\n%s", logs.String())
	}
}
