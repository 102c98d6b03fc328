package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// TestEnrolAtRuntimeThroughCNI: a pod already running, with its app up,
// is enrolled through ztunnel's CNI socket and captured from then on,
// without a restart.
func TestEnrolAtRuntimeThroughCNI(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	late, err := m.Bed.Nodes()[0].AddPod("late")
	if err != nil {
		t.Fatal(err)
	}
	// Before enrolment: the pod is not in the mesh and is refused.
	m.refused(t, late, "", fmt.Sprintf("%s:8080", api.IP))
	// The controller adds the pod to the state (it runs as the frontend).
	var b []byte
	for _, w := range m.State.Workloads {
		b = fmt.Appendf(b, "- {name: %s, namespace: %s, serviceAccount: %s, node: %s, ips: [%s], labels: {app: %s}, protocol: %s}\n",
			w.Name, w.Namespace, w.ServiceAccount, w.Node, w.IPs[0], w.Labels["app"], w.Protocol)
	}
	b = fmt.Appendf(b, "- {name: late, namespace: shop, serviceAccount: frontend, node: node-1, ips: [%s], labels: {app: late}}\n", late.IP)
	snap, err := state.Decode(append([]byte("workloads:\n"), b...), state.Options{TrustDomain: m.TrustDomain.Name()})
	if err != nil {
		t.Fatal(err)
	}
	m.Ztunnels["node-1"].SetState(context.Background(), snap)
	m.Ztunnels["node-2"].SetState(context.Background(), snap)

	socket := serveCNI(t, m.Ztunnels["node-1"])
	client := &cni.Client{Socket: socket}
	if err := client.Add(context.Background(), cni.Pod{UID: "late", Name: "late", Namespace: "shop", Netns: late.Path}); err != nil {
		t.Fatal(err)
	}
	c, err := dialFrom(t, late, fmt.Sprintf("%s:8080", api.IP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "late hello"); err != nil || got != "late hello" {
		t.Fatalf("after enrolment: %q, %v", got, err)
	}
	pods, err := client.Snapshot(context.Background())
	if err != nil || len(pods) != 4 {
		t.Errorf("snapshot = %d pods, %v", len(pods), err)
	}
	if err := client.Delete(context.Background(), "late"); err != nil {
		t.Fatal(err)
	}
	// After deletion it is outside the mesh again: plaintext, refused.
	m.refused(t, late, "", fmt.Sprintf("%s:8080", api.IP))
}

func serveCNI(t *testing.T, z *ztunnel.Ztunnel) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rm-cni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "z.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	// The server, and its logging into t, ends before the test does.
	testgo.Go(t, func(ctx context.Context) {
		if err := cni.Serve(ctx, l, z, slog.New(slog.NewTextHandler(testWriter{t}, nil))); err != nil {
			t.Errorf("CNI server: %v", err)
		}
	})
	return socket
}

// TestBulkIntegrityWhilePolicyReloadsAndSVIDsRotate: many concurrent
// connections carry data through both ztunnels while the policy bundle is
// replaced (by an equivalent revision) over and over and the SVIDs rotate
// (20s lifetime, rotated at half); every byte arrives intact, and new
// connections keep opening with the new SVIDs.
func TestBulkIntegrityWhilePolicyReloadsAndSVIDsRotate(t *testing.T) {
	m := startMeshWith(t, []string{writePolicy(t, allowFrontendToAPI)}, false, 20*time.Second)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	frontend, _ := m.Spec("frontend")
	first, err := m.SVID(frontend)
	if err != nil {
		t.Fatal(err)
	}
	// 1000 MiB in all; 50 MiB under the race detector or -short. make
	// test runs it at full size too, without the race detector (FULL_SIZE
	// in the Makefile).
	conns, perConn := 50, 20<<20
	if raceEnabled || testing.Short() {
		perConn = 1 << 20
	}
	stop := make(chan struct{})
	dir := t.TempDir()
	reloads := testgo.Go(t, func(ctx context.Context) {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			// Not loadPolicy: its t.Fatal belongs to the test's goroutine.
			bundle := filepath.Join(dir, fmt.Sprint(i))
			os.Mkdir(bundle, 0o755)
			os.WriteFile(filepath.Join(bundle, ".manifest"), []byte(`{"revision": "e2e", "roots": ["mesh/policies/e2e"]}`), 0o644)
			os.WriteFile(filepath.Join(bundle, "policy.rego"), []byte(allowFrontendToAPI+fmt.Sprintf("\n# revision %d\n", i)), 0o644)
			if err := (policy.BundleFiles{Paths: []string{bundle}}).Load(ctx, m.Engines["node-2"]); err != nil {
				t.Errorf("policy reload %d: %v", i, err)
				return
			}
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() { errs <- echoChecked(t, m, api.IP.String(), i, perConn) })
	}
	wg.Wait()
	// Keep new connections going until the SVIDs have rotated.
	deadline := time.Now().Add(30 * time.Second)
	rotated := false
	for !rotated && time.Now().Before(deadline) {
		if err := echoChecked(t, m, api.IP.String(), 99, 64<<10); err != nil {
			t.Errorf("a new connection while rotating: %v", err)
		}
		now, err := m.SVID(frontend)
		rotated = err == nil && now.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	<-reloads
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if !rotated {
		t.Fatal("the frontend's SVID did not rotate within 30s of a 20s lifetime")
	}
	if err := echoChecked(t, m, api.IP.String(), 100, 1<<20); err != nil {
		t.Errorf("a connection with the rotated SVID: %v", err)
	}
	t.Logf("%d connections x %d MiB echoed intact through two ztunnels during policy reloads; SVIDs rotated", conns, perConn>>20)
}

// echoChecked sends n pseudo-random bytes and checks the echo's SHA-256.
func echoChecked(t *testing.T, m *mesh, ip string, seed, n int) error {
	c, err := dialFrom(t, m.Pods["frontend"], ip+":8080")
	if err != nil {
		return err
	}
	defer c.Close()
	sent, got := sha256.New(), sha256.New()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, c, int64(n))
		done <- err
	}()
	src := io.TeeReader(io.LimitReader(newStream(seed), int64(n)), sent)
	if _, err := io.Copy(c, src); err != nil {
		c.Close()
		<-done // the receiving goroutine ends with c
		return fmt.Errorf("conn %d: send: %w", seed, err)
	}
	if err := <-done; err != nil {
		return fmt.Errorf("conn %d: receive: %w", seed, err)
	}
	if fmt.Sprintf("%x", sent.Sum(nil)) != fmt.Sprintf("%x", got.Sum(nil)) {
		return fmt.Errorf("conn %d: the echo differs from what was sent", seed)
	}
	return nil
}

// stream is a cheap deterministic byte source.
type stream struct{ x uint64 }

func newStream(seed int) *stream { return &stream{x: uint64(seed)*0x9e3779b97f4a7c15 + 1} }

func (s *stream) Read(p []byte) (int, error) {
	for i := range p {
		s.x ^= s.x << 13
		s.x ^= s.x >> 7
		s.x ^= s.x << 17
		p[i] = byte(s.x)
	}
	return len(p), nil
}

// TestRestarts: a restarted ztunnel restores its pods' listeners from its
// pods file (their capture stayed in place) and new connections work; a
// SPIRE agent restart breaks neither established nor new connections
// while the SVIDs held are valid.
func TestRestarts(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)
	call := func(what string) {
		t.Helper()
		c, err := dialFrom(t, m.Pods["frontend"], target)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer c.Close()
		if got, err := roundTrip(c, what); err != nil || got != what {
			t.Fatalf("%s: %q, %v", what, got, err)
		}
	}
	call("before")
	t.Run("ztunnel restart", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		restored, err := m.RestartZtunnel(ctx, "node-2")
		if err != nil || restored != 1 {
			t.Fatalf("restored %d pods: %v", restored, err)
		}
		call("after ztunnel restart")
	})
	t.Run("SPIRE agent restart", func(t *testing.T) {
		established, err := dialFrom(t, m.Pods["frontend"], target)
		if err != nil {
			t.Fatal(err)
		}
		defer established.Close()
		roundTrip(established, "open")
		agent := m.Agent("node-1")
		agent.Kill()
		if got, err := roundTrip(established, "during"); err != nil || got != "during" {
			t.Errorf("established connection broke when the agent died: %q, %v", got, err)
		}
		call("new, agent down")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := agent.Start(ctx); err != nil {
			t.Fatal(err)
		}
		call("new, agent back")
		if got, err := roundTrip(established, "after"); err != nil || got != "after" {
			t.Errorf("established connection broke across the agent restart: %q, %v", got, err)
		}
	})
}
