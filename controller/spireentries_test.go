package controller_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// The controller registers the SPIRE entries of enrolled workloads in a
// real SPIRE server, from the state it builds from a real API server:
// only while it leads; parented to node aliases; deleted when a pod or a
// namespace leaves the mesh; never touching an entry it did not create,
// even one of the same SPIFFE ID; and, with the server away, retrying
// and saying why until the server is back, with nothing lost.
func TestSPIREEntries(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	dir, err := os.MkdirTemp("/tmp", "rm-reg") // short: the server's socket lives there
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	server := startSPIRE(t, td, dir)
	closed := false
	t.Cleanup(func() {
		if !closed {
			server.Close()
		}
	})
	registrar, err := spire.DialRegistrar(server.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer registrar.Close()

	alias := func(node string) spiffeid.ID {
		return spiffeid.RequireFromSegments(td, "regomesh", "node", "east", node)
	}
	id := func(ns, sa string) spiffeid.ID { return spiffeid.RequireFromSegments(td, "ns", ns, "sa", sa) }
	// Entries that are not the mesh's: another workload's; one of web-1's
	// SPIFFE ID and node with a selector more; and solo's very entry.
	ctx := context.Background()
	foreign := []spire.Registration{
		{ID: id("billing", "api"), Parent: spiffeid.RequireFromSegments(td, "spire", "agent", "join_token", "x"), Selectors: spire.KubernetesSelectors("billing", "api")},
		{ID: id("shop", "sa-web-1"), Parent: alias("node-shop"), Selectors: append(spire.KubernetesSelectors("shop", "sa-web-1"), spire.Selector{Type: "k8s", Value: "pod-label:app:web"})},
		{ID: id("legacy", "sa-solo"), Parent: alias("node-legacy"), Selectors: spire.KubernetesSelectors("legacy", "sa-solo")},
	}
	for _, reg := range foreign {
		if _, _, err := server.Registrar().Apply(ctx, reg); err != nil {
			t.Fatal(err)
		}
	}

	var leading atomic.Bool
	entries, err := controller.NewSPIREEntries(controller.SPIREEntriesConfig{
		Registrar: registrar, TrustDomain: td, Agents: controller.NodeAgents{Cluster: "east"}, Leading: leading.Load,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	e := startPublishing(t, entries.Set)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); entries.Run(runCtx) }()
	defer func() { stop(); <-done }()

	e.namespace("shop", map[string]string{"istio.io/dataplane-mode": "ambient"})
	e.namespace("legacy", map[string]string{"istio.io/dataplane-mode": "ambient"})
	e.pod("shop", "web-1", "10.1.0.1", nil)
	e.pod("shop", "web-2", "10.1.0.2", map[string]string{"istio.io/dataplane-mode": "none"})
	e.pod("legacy", "solo", "10.1.1.3", nil)

	// Not leading: the entries are known, and not written.
	waitStatus(t, entries, "the desired entries, not leading", func(s controller.SPIREEntriesStatus) bool { return s.Desired == 4 && !s.Leading })
	if got := owned(t, registrar, entries); len(got) != 0 {
		t.Errorf("entries written while not leading: %v", got)
	}

	// Leading: web-1's entry under node-shop's alias, the aliases; solo's
	// is there already, not the mesh's, and stays so.
	leading.Store(true)
	st := waitStatus(t, entries, "the entries written", func(s controller.SPIREEntriesStatus) bool { return !s.SyncedAt.IsZero() })
	want := []string{
		fmt.Sprintf("%s <- spiffe://%s/spire/server [k8s_psat:agent_node_name:node-legacy k8s_psat:cluster:east]", alias("node-legacy"), td.Name()),
		fmt.Sprintf("%s <- spiffe://%s/spire/server [k8s_psat:agent_node_name:node-shop k8s_psat:cluster:east]", alias("node-shop"), td.Name()),
		fmt.Sprintf("%s <- %s [k8s:ns:shop k8s:sa:sa-web-1]", id("shop", "sa-web-1"), alias("node-shop")),
	}
	slices.Sort(want)
	if got := owned(t, registrar, entries); !slices.Equal(got, want) {
		t.Errorf("the mesh's entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(st.Foreign) != 1 || !strings.Contains(st.Foreign[0], id("legacy", "sa-solo").String()) || st.Created != 3 {
		t.Errorf("status %+v: want 3 created and solo's entry named as another's", st)
	}

	// web-1 opts out, legacy leaves the mesh: their entries and aliases go.
	patch(t, e.kube, "shop", "web-1", `{"metadata":{"labels":{"istio.io/dataplane-mode":"none"}}}`)
	if _, err := e.kube.CoreV1().Namespaces().Patch(e.ctx, "legacy", types.MergePatchType, []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":null}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEntries(t, registrar, entries, "every entry deleted", nil)
	for _, reg := range foreign {
		held, err := server.Registrar().Lookup(ctx, reg.ID, reg.Parent)
		if err != nil || len(held) != 1 || len(held[0].Selectors) != len(reg.Selectors) {
			t.Errorf("the entry of %s that is not the mesh's: %+v, %v; want it untouched", reg.ID, held, err)
		}
	}

	// The server away: a new pod's entry waits, the failure is reported,
	// and it is written once the server is back.
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	e.pod("shop", "web-3", "10.1.0.4", nil)
	st = waitStatus(t, entries, "the failure reported", func(s controller.SPIREEntriesStatus) bool { return s.Failures >= 2 && s.Desired == 2 })
	if !strings.Contains(st.LastError, "is spire-server running") {
		t.Errorf("status with the server away: %+v; want the error to say what to check", st)
	}
	server = startSPIRE(t, td, dir)
	closed = false
	waitEntries(t, registrar, entries, "web-3's entry written once the server is back", []string{
		fmt.Sprintf("%s <- %s [k8s:ns:shop k8s:sa:sa-web-3]", id("shop", "sa-web-3"), alias("node-shop")),
		fmt.Sprintf("%s <- spiffe://%s/spire/server [k8s_psat:agent_node_name:node-shop k8s_psat:cluster:east]", alias("node-shop"), td.Name()),
	}) // sorted
	st = waitStatus(t, entries, "the failure cleared", func(s controller.SPIREEntriesStatus) bool { return s.LastError == "" })
	if st.Failures != 0 || st.Deleted != 3 {
		t.Errorf("status after the server came back: %+v; want no failures, 3 deleted in all", st)
	}
}

// An agent ID template parents a node's entries to the agent it names,
// and makes no alias; a template that makes no SPIFFE ID of the trust
// domain is refused.
func TestNodeAgentsTemplate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	for _, tc := range []struct{ text, wantErr string }{
		{"spiffe://{{.TrustDomain}}/spire/agent/x509pop/{{.Node}}", ""},
		{"spiffe://other.test/spire/agent/{{.Node}}", "outside trust domain regomesh.test"},
		{"{{.Node}}", "made \"node-1\""},
		{"{{.Zone}}", "can't evaluate field Zone"},
		{"{{", "unclosed action"},
	} {
		_, err := controller.ParseAgentIDTemplate(tc.text, td)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ParseAgentIDTemplate(%q) = %v; want %q", tc.text, err, tc.wantErr)
		}
	}
	if _, err := controller.NewSPIREEntries(controller.SPIREEntriesConfig{Registrar: &spire.Registrar{}, TrustDomain: td, Agents: controller.NodeAgents{Cluster: "East_1"}}); err == nil || !strings.Contains(err.Error(), "SPIRE cluster name") {
		t.Errorf("cluster name East_1: %v; want it refused", err)
	}
}

func startSPIRE(t *testing.T, td spiffeid.TrustDomain, dir string) *harness.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := harness.StartServer(ctx, harness.ServerConfig{TrustDomain: td, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startPublishing is start, with also fed every update too.
func startPublishing(t *testing.T, also func(*controller.Update)) *env {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	rec := &recorder{changed: make(chan struct{})}
	c, err := controller.New(rc, controller.Config{
		TrustDomain: trustDomain, Debounce: 20 * time.Millisecond,
		Publish: func(u *controller.Update) { rec.set(u); also(u) },
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &env{t: t, ctx: ctx, updates: rec, kube: kubernetes.NewForConfigOrDie(rc)}
}

func patch(t *testing.T, kube kubernetes.Interface, namespace, pod, body string) {
	t.Helper()
	if _, err := kube.CoreV1().Pods(namespace).Patch(context.Background(), pod, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// owned lists the mesh's entries on the server as "<id> <- <parent>
// [selectors]", sorted.
func owned(t *testing.T, r *spire.Registrar, entries *controller.SPIREEntries) []string {
	t.Helper()
	held, err := r.Entries(context.Background(), entries.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range held {
		var sel []string
		for _, s := range e.Selectors {
			sel = append(sel, s.String())
		}
		slices.Sort(sel)
		out = append(out, fmt.Sprintf("%s <- %s %v", e.ID, e.Parent, sel))
	}
	slices.Sort(out)
	return out
}

// The registration runs beside the test: these poll what it wrote, with
// a generous bound.
const entriesTimeout = 60 * time.Second

func waitStatus(t *testing.T, entries *controller.SPIREEntries, what string, cond func(controller.SPIREEntriesStatus) bool) controller.SPIREEntriesStatus {
	t.Helper()
	deadline := time.Now().Add(entriesTimeout)
	for {
		st := entries.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEntries waits for the mesh's entries to be want, sorted.
func waitEntries(t *testing.T, r *spire.Registrar, entries *controller.SPIREEntries, what string, want []string) {
	t.Helper()
	deadline := time.Now().Add(entriesTimeout)
	for {
		held, err := r.Entries(context.Background(), entries.Prefix())
		var got []string
		if err == nil {
			got = owned(t, r, entries)
		}
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the mesh's entries %v (%d, %v); want %v; status %+v", what, got, len(held), err, want, entries.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
