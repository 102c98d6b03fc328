// Package e2e runs the mesh end to end on one machine (localmesh):
// nodes and pods as network namespaces, real SPIRE (server and one agent
// per node), one ztunnel per node capturing its pods with nftables, and
// policy as Rego bundles. The tests need root; CI runs them as root.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel"
)

var app = []localmesh.PodSpec{
	{Name: "frontend", Node: "node-1", Namespace: "shop", ServiceAccount: "frontend"},
	{Name: "intruder", Node: "node-1", Namespace: "shop", ServiceAccount: "intruder"},
	{Name: "api", Node: "node-2", Namespace: "shop", ServiceAccount: "api"},
	{Name: "legacy", Node: "node-1", Namespace: "old", ServiceAccount: "legacy", Outside: true},
	{Name: "orphan", Node: "node-1", Namespace: "shop", ServiceAccount: "orphan", NoEntry: true},
}

// allowFrontendToAPI is hand-written Rego: only the frontend may reach
// the api, on 8080.
const allowFrontendToAPI = `package mesh.policies.e2e.api

allow_scope contains {"policy": "e2e/api"} if input.destination.labels.app == "api"

allow contains {"policy": "e2e/api", "rule": "frontend-only"} if {
	input.destination.labels.app == "api"
	input.source.principal == "spiffe://regomesh.test/ns/shop/sa/frontend"
	input.destination.port == 8080
}
`

// mesh is a running test mesh, its access log and its metrics.
type mesh struct {
	*localmesh.Mesh
	accessLog  *syncbuf.Buffer
	registries map[string]*prometheus.Registry
}

func newMeshWithMetrics(t *testing.T, bundleSrc string) *mesh {
	return startMesh(t, []string{writePolicy(t, bundleSrc)}, true)
}

// nets hands each mesh of this test binary its own addresses and names.
var nets = struct {
	sync.Mutex
	next int
}{next: 220}

func newMesh(t *testing.T, bundleSrc string) *mesh {
	t.Helper()
	return startMesh(t, []string{writePolicy(t, bundleSrc)}, false)
}

func startMesh(t *testing.T, bundles []string, metrics bool) *mesh {
	t.Helper()
	return startMeshWith(t, bundles, metrics, 0)
}

func startMeshWith(t *testing.T, bundles []string, metrics bool, svidTTL time.Duration) *mesh {
	t.Helper()
	return startMeshFrom(t, localmesh.Config{Bundles: bundles, SVIDTTL: svidTTL}, metrics)
}

// startMeshFrom starts a mesh from cfg (the app's pods unless cfg names
// its own), filling in the names, addresses, access log, metrics and
// logger every test mesh shares.
func startMeshFrom(t *testing.T, cfg localmesh.Config, metrics bool) *mesh {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root (network namespaces, nftables); CI runs them as root")
	}
	nets.Lock()
	net := nets.next
	nets.next++
	nets.Unlock()
	m := &mesh{accessLog: &syncbuf.Buffer{}}
	if metrics {
		m.registries = map[string]*prometheus.Registry{"node-1": prometheus.NewRegistry(), "node-2": prometheus.NewRegistry()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	cfg.Prefix, cfg.Net = fmt.Sprintf("rme%d-%d", os.Getpid()%100000, net), net
	cfg.Nodes = []string{"node-1", "node-2"}
	if cfg.Pods == nil {
		cfg.Pods = app
	}
	cfg.AccessLog, cfg.Registries = m.accessLog, m.registries
	logs := &testLog{t: t}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m.Mesh, err = localmesh.Start(ctx, cfg)
	if err != nil {
		logs.end()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("SPIRE and ztunnel process logs:\n%s", m.Logs())
		}
		if err := m.Close(); err != nil {
			t.Errorf("closing the mesh: %v", err)
		}
		logs.end()
		if left := namespacesLeft(t, cfg.Prefix); len(left) > 0 {
			t.Errorf("network namespaces left behind (and the nftables rules in them): %v", left)
		}
	})
	return m
}

// namespacesLeft lists the named network namespaces whose names start
// with the mesh's prefix. The capture rules live in the pods' namespaces,
// so none left means no rule left either.
func namespacesLeft(t *testing.T, prefix string) []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("listing network namespaces: %v", err)
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			left = append(left, e.Name())
		}
	}
	return left
}

func writePolicy(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".manifest"), []byte(`{"revision": "e2e", "roots": ["mesh/policies/e2e"]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(src), 0o644)
	return dir
}

// loadPolicy replaces one node's policy.
func (m *mesh) loadPolicy(t *testing.T, node, src string) {
	t.Helper()
	if err := (policy.BundleFiles{Paths: []string{writePolicy(t, src)}}).Load(context.Background(), m.Engines[node]); err != nil {
		t.Fatal(err)
	}
}

// echoServer runs a TCP echo server on port inside the pod.
func echoServer(t *testing.T, p *netbed.Pod, port int) {
	t.Helper()
	l, err := localmesh.Listen(p, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		localmesh.Echo(l)
	})
}

// dialFrom opens a connection from inside pod p, as its app would.
func dialFrom(t *testing.T, p *netbed.Pod, addr string) (net.Conn, error) {
	return localmesh.Dial(p, addr, 5*time.Second)
}

// roundTrip writes msg and reads the echo; an error means the mesh refused.
func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

// accessEntries returns the access-log lines so far.
func (m *mesh) accessEntries(t *testing.T) []ztunnel.AccessEntry {
	var out []ztunnel.AccessEntry
	sc := bufio.NewScanner(bytes.NewReader(m.accessLog.Bytes()))
	for sc.Scan() {
		var e ztunnel.AccessEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// intruderRefused checks that the intruder pod is refused by target and
// returns the inbound access-log entry of its attempt.
func (m *mesh) intruderRefused(t *testing.T, target string) ztunnel.AccessEntry {
	t.Helper()
	return m.refused(t, m.Pods["intruder"], "spiffe://regomesh.test/ns/shop/sa/intruder", target)
}

// refusedWithin bounds how long a refusal may take to reach the app: far
// less than roundTrip's 10s deadline, which a mesh that ignored the
// connection would run into.
const refusedWithin = 5 * time.Second

// refused checks that the mesh refuses a connection from pod p (with
// SPIFFE ID id, or "" for a pod outside the mesh) to target: the dial
// fails, or the connection is reset or closed within refusedWithin with
// nothing echoed. The inbound ztunnel logs the deny; for a pod in the
// mesh its own ztunnel logs the 401 its tunnel got. It returns the
// inbound entry.
func (m *mesh) refused(t *testing.T, p *netbed.Pod, id, target string) ztunnel.AccessEntry {
	t.Helper()
	before := len(m.accessEntries(t))
	promptlyRefused(t, p, target)
	return m.denyLoggedTo(t, before, p, id, target)
}

// promptlyRefused checks that a connection from p to target fails to
// open, or is reset or closed within refusedWithin with nothing echoed.
func promptlyRefused(t *testing.T, p *netbed.Pod, target string) {
	t.Helper()
	c, err := dialFrom(t, p, target)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(refusedWithin))
	c.Write([]byte("let me in")) // may fail already: refused
	n, err := c.Read(make([]byte, 64))
	switch {
	case n > 0:
		t.Fatalf("%s to %s: got %d bytes back, want a refusal", p.Name, target, n)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("%s to %s: neither reset nor closed after %v, want a refusal", p.Name, target, refusedWithin)
	case err == nil:
		t.Fatalf("%s to %s: an empty read without an error", p.Name, target)
	}
}

// denyLogged waits for the access-log entries of a refused attempt from
// p (SPIFFE ID id, "" outside the mesh), among those after the first
// before: the inbound deny and, from a pod in the mesh, the outbound 401.
func (m *mesh) denyLogged(t *testing.T, before int, p *netbed.Pod, id string) ztunnel.AccessEntry {
	t.Helper()
	return m.denyLoggedTo(t, before, p, id, "")
}

// denyLoggedTo is denyLogged for an attempt to target (host:port; "" for
// any): the outbound entry checked is that attempt's, not the end of an
// earlier connection of p's logged meanwhile.
func (m *mesh) denyLoggedTo(t *testing.T, before int, p *netbed.Pod, id, target string) ztunnel.AccessEntry {
	t.Helper()
	in := m.waitForEntrySince(t, before, func(e ztunnel.AccessEntry) bool {
		if e.Direction != "inbound" || e.Decision != "deny" {
			return false
		}
		if id == "" {
			return e.SourceID == "" && strings.HasPrefix(e.Source, p.IP.String()+":")
		}
		return e.SourceID == id
	})
	if in.Flags != ztunnel.FlagDenied || in.Sent != 0 {
		t.Errorf("inbound deny entry = %+v, want flag %s and nothing sent", in, ztunnel.FlagDenied)
	}
	if id != "" {
		out := m.waitForEntrySince(t, before, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "outbound" && e.SourceID == id && (target == "" || e.Destination == target)
		})
		if out.Flags != ztunnel.FlagDenied || !strings.Contains(out.Error, hbone.ErrDenied.Error()) {
			t.Errorf("outbound entry of the refused tunnel = %+v, want the 401 (flag %s)", out, ztunnel.FlagDenied)
		}
	}
	return in
}

func (m *mesh) waitForEntry(t *testing.T, match func(ztunnel.AccessEntry) bool) ztunnel.AccessEntry {
	t.Helper()
	return m.waitForEntrySince(t, 0, match)
}

// waitForEntrySince waits for an entry that match accepts among those
// logged after the first before.
func (m *mesh) waitForEntrySince(t *testing.T, before int, match func(ztunnel.AccessEntry) bool) ztunnel.AccessEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range m.accessEntries(t)[before:] {
			if match(e) {
				return e
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no matching access-log entry in:\n%s", m.accessLog.Bytes())
	return ztunnel.AccessEntry{}
}

// gatherMetric lists the label sets of a metric as "k=v,k=v".
func gatherMetric(t *testing.T, reg *prometheus.Registry, name string) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out = append(out, strings.Join(labels, ","))
		}
	}
	return out
}

// hasSeries reports whether some series carries every k=v of want.
func hasSeries(series []string, want string) bool {
	for _, s := range series {
		all := true
		for _, kv := range strings.Split(want, ",") {
			all = all && strings.Contains(","+s+",", ","+kv+",")
		}
		if all {
			return true
		}
	}
	return false
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testLog is the mesh components' log: lines go to the test's log until
// the mesh is closed. A component goroutine that outlives Close (one of
// ztunnel's connection goroutines ending late) must not report into a
// finished test: its lines go to stderr, named as late.
type testLog struct {
	t     *testing.T
	mu    sync.Mutex
	ended bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		fmt.Fprintf(os.Stderr, "%s (logged after the mesh closed): %s", l.t.Name(), p)
		return len(p), nil
	}
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *testLog) end() {
	l.mu.Lock()
	l.ended = true
	l.mu.Unlock()
}
