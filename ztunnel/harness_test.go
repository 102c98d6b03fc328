package ztunnel

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The mesh of the path tests: one node whose ztunnel serves four pods of
// namespace shop, each on loopback (loopbackNet) rather than in a network
// namespace, so the tests run as an ordinary user. Everything else is
// real: SVIDs from a test CA, mutual TLS and HBONE between the pods'
// servers and pools, the policy engine with translated Istio policies.
const pathState = `
workloads:
- {name: client, namespace: shop, serviceAccount: web, ips: [10.0.0.1]}
- {name: api-1, namespace: shop, serviceAccount: api, ips: [10.0.0.2], labels: {app: api}}
- {name: intruder, namespace: shop, serviceAccount: intruder, ips: [10.0.0.3]}
- {name: orphan, namespace: shop, serviceAccount: orphan, ips: [10.0.0.4]}
services:
- {name: api, namespace: shop, vips: [10.96.0.2], ports: [{port: 80, targetPort: 8080}], selector: {app: api}}
`

// pathPolicies: only web may reach the api; nobody sends mail (port 25)
// anywhere; the shop namespace takes no plaintext.
const pathPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-mail, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["25"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
`

const (
	apiApp   = "10.0.0.2:8080" // the api workload's server
	outside  = "192.0.2.10:80" // a server outside the mesh
	mailHost = "192.0.2.10:25"
	webID    = "spiffe://cluster.local/ns/shop/sa/web"
	apiID    = "spiffe://cluster.local/ns/shop/sa/api"
)

// pathMesh is the running mesh of one test.
type pathMesh struct {
	z       *Ztunnel
	engine  *policy.Engine
	net     *loopbackNet
	reg     *prometheus.Registry
	access  *syncbuf.Buffer
	pods    map[string]*pod // by workload name
	ca      *testpki.CA
	bundle  *x509bundle.Bundle
	snap    *state.Snapshot
	idsHeld *testIdentities
	stopped sync.Once
}

func newPathMesh(t *testing.T) *pathMesh {
	t.Helper()
	ca := testpki.New(t, "cluster.local")
	m := &pathMesh{
		net: newLoopbackNet(), reg: prometheus.NewRegistry(), access: &syncbuf.Buffer{},
		pods: map[string]*pod{}, ca: ca, bundle: ca.Bundle(),
	}
	m.idsHeld = &testIdentities{bundle: m.bundle, svids: map[spiffeid.ID]*x509svid.SVID{}}
	for _, sa := range []string{"web", "api", "intruder"} { // orphan has none
		svid := ca.SVID(t, "/ns/shop/sa/"+sa)
		m.idsHeld.svids[svid.ID] = svid
	}
	var err error
	if m.snap, err = state.Decode([]byte(pathState), state.Options{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	if m.engine, err = policy.NewEngine(policy.Config{Logger: discard}); err != nil {
		t.Fatal(err)
	}
	m.loadIstio(t, pathPolicies)
	m.z, err = New(Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Policy: m.engine, Identities: m.idsHeld,
		Metrics: NewMetrics(m.reg), AccessLog: NewAccessLog(m.access), Logger: discard, DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.z.SetState(t.Context(), m.snap)
	t.Cleanup(func() { m.stop(t) })
	for _, name := range []string{"client", "api-1", "intruder", "orphan"} {
		m.addPod(t, name)
	}
	m.net.bind(netip.MustParseAddrPort(apiApp), echoServer(t, 2))
	m.net.bind(netip.MustParseAddrPort(outside), echoServer(t, 2))
	m.net.bind(netip.MustParseAddrPort(mailHost), echoServer(t, 2))
	return m
}

// loadIstio translates Istio YAML and loads it as the engine's only
// bundle.
func (m *pathMesh) loadIstio(t *testing.T, yaml string) {
	t.Helper()
	res, notes, err := istio.DecodeAll(strings.NewReader(yaml), "policies.yaml")
	if err != nil {
		t.Fatalf("decode: %v %v", err, notes)
	}
	tr, err := istio.TranslateAll(res, istio.Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.engine.Load(t.Context(), b); err != nil {
		t.Fatal(err)
	}
}

// addPod serves the workload's pod on loopback, as enroll would in its
// network namespace.
func (m *pathMesh) addPod(t *testing.T, name string) {
	t.Helper()
	w, ok := m.snap.Workload("shop", name)
	if !ok {
		t.Fatalf("no workload %s", name)
	}
	info := cni.Pod{UID: "uid-" + name, Name: name, Namespace: "shop"}
	p, err := m.z.startPod(info, w, m.net.pod(w.IPs[0]))
	if err != nil {
		t.Fatal(err)
	}
	m.z.mu.Lock()
	m.z.pods[info.UID] = p
	m.z.mu.Unlock()
	m.pods[name] = p
}

// stop stops the ztunnel once, waits until every connection it opened is
// reported closed, and checks that the metrics agree: nothing may outlive
// the test, and every connection is reported once.
func (m *pathMesh) stop(t *testing.T) { m.stopped.Do(func() { m.shutdown(t) }) }

// settled waits for n access-log lines, stops the ztunnel, and returns
// the lines, which must still be exactly n: no connection reported twice
// or late.
func (m *pathMesh) settled(t *testing.T, n int) []AccessEntry {
	t.Helper()
	m.waitEntries(t, n)
	m.stop(t)
	es := m.entries(t)
	if len(es) != n {
		t.Fatalf("%d access-log lines once stopped, want %d:\n%s", len(es), n, m.access.String())
	}
	return es
}

func (m *pathMesh) shutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.z.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		opened, closed := m.sum("istio_tcp_connections_opened_total", nil), m.sum("istio_tcp_connections_closed_total", nil)
		if opened == closed && float64(len(m.entries(t))) == closed {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after shutdown: %v opened, %v closed, %d access-log lines", opened, closed, len(m.entries(t)))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dial connects as the pod's workload would to dst: to its ztunnel's
// outbound listener, with dst as the original destination.
func (m *pathMesh) dial(t *testing.T, from, dst string) net.Conn {
	t.Helper()
	return m.dialCaptured(t, m.pods[from].outbound, dst)
}

// dialPlaintext connects from outside the mesh to dst, a port of the
// pod's: captured to its ztunnel's plaintext listener.
func (m *pathMesh) dialPlaintext(t *testing.T, to, dst string) net.Conn {
	t.Helper()
	return m.dialCaptured(t, m.pods[to].plaintext, dst)
}

func (m *pathMesh) dialCaptured(t *testing.T, l net.Listener, dst string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m.net.redirected(addrPortOf(c.LocalAddr()), netip.MustParseAddrPort(dst))
	return c
}

// entries are the access-log lines so far.
func (m *pathMesh) entries(t *testing.T) []AccessEntry {
	t.Helper()
	var out []AccessEntry
	dec := json.NewDecoder(strings.NewReader(m.access.String()))
	dec.DisallowUnknownFields()
	for dec.More() {
		var e AccessEntry
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("access log: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// waitEntries waits until n lines are logged and returns them.
func (m *pathMesh) waitEntries(t *testing.T, n int) []AccessEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		es := m.entries(t)
		if len(es) >= n || time.Now().After(deadline) {
			if len(es) != n {
				t.Fatalf("%d access-log lines, want %d:\n%s", len(es), n, m.access.String())
			}
			return es
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sum adds up a metric's series whose labels include every one of want.
func (m *pathMesh) sum(name string, want map[string]string) float64 {
	families, err := m.reg.Gather()
	if err != nil {
		panic(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			total += s.GetCounter().GetValue()
		}
	}
	return total
}

// series lists a metric's label sets, each as name=value pairs sorted by
// name, with its value.
func (m *pathMesh) series(name string) map[string]float64 {
	families, err := m.reg.Gather()
	if err != nil {
		panic(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			var pairs []string
			for _, l := range s.GetLabel() { // Gather sorts them by name
				pairs = append(pairs, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(pairs, ",")] += s.GetCounter().GetValue()
		}
	}
	return out
}

// loopbackNet stands for the pods' network namespaces on 127.0.0.1. The
// mesh addresses the state gives pods (10.0.0.x) are names it maps to
// real loopback listeners: a pod's Listen(":15008") binds 127.0.0.1:0
// and maps <pod-ip>:15008 to it; Dial connects to what the address maps
// to, or is refused. What capture's SO_ORIGINAL_DST would tell, the test
// says (redirected) for each client it connects.
type loopbackNet struct {
	mu        sync.Mutex
	addrs     map[netip.AddrPort]netip.AddrPort
	redirects map[netip.AddrPort]chan netip.AddrPort // by the client's address
}

func newLoopbackNet() *loopbackNet {
	return &loopbackNet{addrs: map[netip.AddrPort]netip.AddrPort{}, redirects: map[netip.AddrPort]chan netip.AddrPort{}}
}

// loopbackPod is one pod's network on a loopbackNet.
type loopbackPod struct {
	*loopbackNet
	ip netip.Addr
}

var _ podNet = loopbackPod{}

func (n *loopbackNet) pod(ip netip.Addr) loopbackPod { return loopbackPod{n, ip} }

func (n *loopbackNet) bind(mesh, real netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addrs[mesh] = real
}

func (p loopbackPod) Listen(addr string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(p.ip.String(), port))
	if err != nil {
		l.Close()
		return nil, err
	}
	p.bind(ap, addrPortOf(l.Addr()))
	return l, nil
}

func (p loopbackPod) Dial(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	real, ok := p.addrs[ap]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("test: dial %s from %s: %w", addr, p.ip, syscall.ECONNREFUSED)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", real.String())
}

func (p loopbackPod) OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	select {
	case dst := <-p.redirect(addrPortOf(c.RemoteAddr())):
		return dst, nil
	case <-time.After(10 * time.Second):
		return netip.AddrPort{}, fmt.Errorf("test: no original destination for %s", c.RemoteAddr())
	}
}

// redirected says where the client at addr was going.
func (n *loopbackNet) redirected(client, dst netip.AddrPort) { n.redirect(client) <- dst }

func (n *loopbackNet) redirect(client netip.AddrPort) chan netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.redirects[client]
	if !ok {
		ch = make(chan netip.AddrPort, 1)
		n.redirects[client] = ch
	}
	return ch
}

// echoServer answers every connection with what it reads, each byte
// repeated (so bytes sent and received differ, however reads split the
// stream), until the test ends.
func echoServer(t *testing.T, repeat int) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			context.AfterFunc(ctx, func() { c.Close() })
			conns.Go(func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					var out []byte
					for _, b := range buf[:n] {
						out = append(out, bytes.Repeat([]byte{b}, repeat)...)
					}
					if _, err := c.Write(out); err != nil {
						return
					}
				}
			})
		}
	})
	return addrPortOf(l.Addr())
}

// roundTrip writes msg and reads back what an echoServer repeating
// twice answers.
func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, 2*len(msg))
	n, err := io.ReadFull(c, buf)
	return string(buf[:n]), err
}

// testIdentities are the pods' SVIDs, issued by the test CA as SPIRE
// would issue them; a pod without one cannot open tunnels.
type testIdentities struct {
	bundle *x509bundle.Bundle
	svids  map[spiffeid.ID]*x509svid.SVID
}

var _ Identities = (*testIdentities)(nil)

func (ids *testIdentities) SVID(id spiffeid.ID) (*x509svid.SVID, error) {
	if s, ok := ids.svids[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("test: no SVID issued for %s", id)
}

func (ids *testIdentities) Bundles(spiffeid.ID) x509bundle.Source { return ids.bundle }
func (ids *testIdentities) Hold(spiffeid.ID, string, string) error {
	return nil
}
func (ids *testIdentities) Release(spiffeid.ID) {}
