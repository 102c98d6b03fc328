// Package e2e runs the mesh end to end on one machine: nodes and pods as
// network namespaces (test/netbed), real SPIRE (server and one agent per
// node), one ztunnel per node capturing its pods with nftables, and policy
// as Rego bundles. The tests need root; CI runs them as root.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/vishvananda/netns"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/test/netbed"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// mesh is a running test mesh.
type mesh struct {
	bed       *netbed.Bed
	td        spiffeid.TrustDomain
	ztunnels  map[string]*ztunnel.Ztunnel // by node name
	engines   map[string]*policy.Engine
	pods      map[string]*netbed.Pod // by pod name
	accessLog *syncBuffer
	state     *state.Snapshot
	stores    []nodeStore
}

// podSpec is one pod of the test app.
type podSpec struct {
	name, node, namespace, sa string
	outside                   bool // not in the mesh: never enrolled, plaintext
	noEntry                   bool // enrolled, but SPIRE has no entry for it
}

var app = []podSpec{
	{name: "frontend", node: "node-1", namespace: "shop", sa: "frontend"},
	{name: "intruder", node: "node-1", namespace: "shop", sa: "intruder"},
	{name: "api", node: "node-2", namespace: "shop", sa: "api"},
	{name: "legacy", node: "node-1", namespace: "old", sa: "legacy", outside: true},
	{name: "orphan", node: "node-1", namespace: "shop", sa: "orphan", noEntry: true},
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

func newMesh(t *testing.T, bundleSrc string) *mesh {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root (network namespaces, nftables); CI runs them as root")
	}
	m := &mesh{td: harness.DefaultTrustDomain, ztunnels: map[string]*ztunnel.Ztunnel{}, engines: map[string]*policy.Engine{},
		pods: map[string]*netbed.Pod{}, accessLog: &syncBuffer{}}
	bed, err := netbed.New(fmt.Sprintf("rme%d", os.Getpid()%10000), 212)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() })
	m.bed = bed
	nodes := map[string]*netbed.Node{}
	for _, name := range []string{"node-1", "node-2"} {
		if nodes[name], err = bed.AddNode(name); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range app {
		if m.pods[p.name], err = nodes[p.node].AddPod(p.name); err != nil {
			t.Fatal(err)
		}
	}
	m.state = m.buildState(t)
	server := harness.NewServer(t, harness.ServerConfig{})
	for _, name := range []string{"node-1", "node-2"} {
		agent := server.NewAgent(t, harness.AgentConfig{Name: name})
		m.register(t, server, agent, name)
		m.startZtunnel(t, name, agent, bundleSrc)
	}
	m.waitForSVIDs(t)
	for _, p := range app {
		if p.outside {
			continue
		}
		pod := m.pods[p.name]
		err := m.ztunnels[p.node].AddPod(context.Background(), cni.Pod{UID: p.name, Name: p.name, Namespace: p.namespace, Netns: pod.Path})
		if err != nil {
			t.Fatalf("enrol %s: %v", p.name, err)
		}
	}
	return m
}

func (m *mesh) buildState(t *testing.T) *state.Snapshot {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for _, p := range app {
		protocol := "HBONE"
		if p.outside {
			protocol = "NONE"
		}
		fmt.Fprintf(&b, "- {name: %s, namespace: %s, serviceAccount: %s, node: %s, ips: [%s], labels: {app: %s}, protocol: %s}\n",
			p.name, p.namespace, p.sa, p.node, m.pods[p.name].IP, p.name, protocol)
	}
	s, err := state.Decode([]byte(b.String()), state.Options{TrustDomain: m.td.Name()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// register creates the SPIRE entries of the node's pods, parented to its agent.
func (m *mesh) register(t *testing.T, server *harness.Server, agent *harness.Agent, node string) {
	t.Helper()
	for _, p := range app {
		if p.node != node || p.outside || p.noEntry {
			continue
		}
		reg, err := spire.KubernetesRegistration(m.td, p.namespace, p.sa, agent.ID())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := server.Registrar().Apply(context.Background(), reg); err != nil {
			t.Fatal(err)
		}
	}
}

func (m *mesh) startZtunnel(t *testing.T, node string, agent *harness.Agent, bundleSrc string) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	engine, err := policy.NewEngine(policy.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m.loadPolicy(t, engine, bundleSrc)
	client, err := spire.Dial(agent.AdminSocket())
	if err != nil {
		t.Fatal(err)
	}
	store := spire.NewStore(client, spire.StoreConfig{Logger: log})
	t.Cleanup(func() { store.Close() })
	z, err := ztunnel.New(ztunnel.Config{
		Node: node, TrustDomain: m.td, Policy: engine, Identities: storeIdentities{store},
		AccessLog: ztunnel.NewAccessLog(m.accessLog), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		z.Shutdown(sctx)
	})
	z.SetState(ctx, m.state)
	go z.WatchPolicy(ctx)
	m.ztunnels[node], m.engines[node] = z, engine
	m.stores = append(m.stores, nodeStore{node, store})
}

type nodeStore struct {
	node  string
	store *spire.Store
}

// waitForSVIDs holds every pod's identity and waits until its node's
// agent has synced the entry and sent the SVID, so the first connection
// does not race SPIRE's sync interval.
func (m *mesh) waitForSVIDs(t *testing.T) {
	t.Helper()
	for _, ns := range m.stores {
		for _, p := range app {
			if p.node != ns.node || p.outside || p.noEntry {
				continue
			}
			id := spiffeid.RequireFromSegments(m.td, "ns", p.namespace, "sa", p.sa)
			if err := (storeIdentities{ns.store}).Hold(id, p.namespace, p.sa); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err := ns.store.SVID(id)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no SVID for %s after 30s: %v", id, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

func (m *mesh) loadPolicy(t *testing.T, engine *policy.Engine, src string) {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".manifest"), []byte(`{"revision": "e2e", "roots": ["mesh/policies/e2e"]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(src), 0o644)
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// storeIdentities adapts the SPIRE store to ztunnel, as cmd/ztunnel does.
type storeIdentities struct{ *spire.Store }

func (s storeIdentities) Hold(id spiffeid.ID, namespace, serviceAccount string) error {
	return s.Add(spire.Workload{ID: id, Selectors: spire.KubernetesSelectors(namespace, serviceAccount)})
}
func (s storeIdentities) Release(id spiffeid.ID) { s.Remove(id) }

// inPod runs fn on a thread inside the pod's namespace (as the app would).
func inPod(t *testing.T, p *netbed.Pod, fn func() error) error {
	t.Helper()
	h, err := netns.GetFromPath(p.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		lockAndEnter(h, errc, fn)
	}()
	return <-errc
}

// echoServer runs a TCP echo server on port inside the pod.
func echoServer(t *testing.T, p *netbed.Pod, port int) {
	t.Helper()
	var l net.Listener
	if err := inPod(t, p, func() (err error) { l, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

// dialFrom opens a connection from inside pod p, as its app would.
func dialFrom(t *testing.T, p *netbed.Pod, addr string) (net.Conn, error) {
	var c net.Conn
	err := inPod(t, p, func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err })
	return c, err
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

func (m *mesh) waitForEntry(t *testing.T, match func(ztunnel.AccessEntry) bool) ztunnel.AccessEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range m.accessEntries(t) {
			if match(e) {
				return e
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no matching access-log entry in:\n%s", m.accessLog.Bytes())
	return ztunnel.AccessEntry{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
