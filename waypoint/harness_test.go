package waypoint

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The mesh of the tests: a client workload in namespace a, the shop
// namespace's waypoint, and the web service's one endpoint, whose
// "ztunnel" is a real hbone.Server relaying to real HTTP, gRPC and TCP
// backends on loopback. Workload addresses are the state's; the pools
// reach them on loopback.
const testState = `
workloads:
- {name: client, namespace: a, serviceAccount: client, ips: [10.1.0.5]}
- {name: waypoint, namespace: shop, serviceAccount: waypoint, ips: [10.1.0.2]}
- {name: web-1, namespace: shop, serviceAccount: web, ips: [10.1.0.9], labels: {app: web}}
- {name: web2-1, namespace: shop, serviceAccount: web, ips: [10.1.0.10], labels: {app: web2, lb: pair}}
- {name: broken-1, namespace: shop, serviceAccount: web, ips: [10.1.0.11], labels: {lb: pair, broken: "yes"}}
- {name: flaky-1, namespace: shop, serviceAccount: web, ips: [10.1.0.12], labels: {app: flaky}}
- {name: flaky-2, namespace: shop, serviceAccount: web, ips: [10.1.0.13], labels: {app: flaky}}
services:
- name: web
  namespace: shop
  vips: [10.96.0.9]
  waypoint: shop/waypoint
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080, name: http}
  - {port: 9090, targetPort: 9090, appProtocol: grpc}
  - {port: 8081, targetPort: 8080}
  - {port: 7000, targetPort: 7000}
  - {port: 7001, targetPort: 7001, name: tcp-greet}
- name: web2
  namespace: shop
  vips: [10.96.0.10]
  waypoint: shop/waypoint
  selector: {app: web2}
  ports:
  - {port: 80, targetPort: 8080, name: http}
- name: pair
  namespace: shop
  vips: [10.96.0.11]
  waypoint: shop/waypoint
  selector: {lb: pair}
  ports:
  - {port: 80, targetPort: 8080, name: http}
- name: broken
  namespace: shop
  vips: [10.96.0.13]
  waypoint: shop/waypoint
  selector: {broken: "yes"}
  ports:
  - {port: 80, targetPort: 8080, name: http}
- name: flaky
  namespace: shop
  vips: [10.96.0.12]
  waypoint: shop/waypoint
  selector: {app: flaky}
  ports:
  - {port: 80, targetPort: 8090, name: http}
`

var (
	webVIP       = netip.MustParseAddr("10.96.0.9")
	webIP        = netip.MustParseAddr("10.1.0.9")
	web2IP       = netip.MustParseAddr("10.1.0.10")  // web2's endpoint, behind the same test ztunnel
	pairVIP      = netip.MustParseAddr("10.96.0.11") // web2-1, and broken-1, whose ztunnel no tunnel reaches
	flakyVIP     = netip.MustParseAddr("10.96.0.12") // flaky-1 and flaky-2, each its own scripted backend
	flakyIPs     = [2]netip.Addr{netip.MustParseAddr("10.1.0.12"), netip.MustParseAddr("10.1.0.13")}
	waypointID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/waypoint")
	clientIDText = "spiffe://cluster.local/ns/a/sa/client"
)

// The policies of the tests, as Istio users write them: requests to the
// web service are allowed to the client for GET /public/* and to anyone
// for the health Check; a header x-block: yes is denied. Connections the
// waypoint relays as TCP see only the rules without HTTP attributes: the
// client may use the TCP ports 7000 and 7001.
const istioPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/client"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/public/*"]}}]
  - to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]
  - from: [{source: {principals: ["cluster.local/ns/a/sa/client"]}}]
    to: [{operation: {ports: ["7000", "7001"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-block, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
`

// testMesh is the running mesh of one test.
type testMesh struct {
	ca        *testpki.CA
	bundle    x509bundle.Source
	engine    *policy.Engine
	reg       *prometheus.Registry
	wp        *Waypoint
	wpAddr    netip.AddrPort
	access    *syncbuf.Buffer
	clients   *hbone.Pool
	clientID  *x509svid.SVID
	upstream  upstreamSeen
	tunnels   atomic.Int64  // tunnels the client opened to the waypoint
	slow      chan struct{} // a request reached the backend's slow path
	backendHs *http.Server
	flaky     [2]*scriptedBackend // the flaky service's endpoints, by flakyIPs
	flakySeen atomic.Int64        // requests both flaky backends got
	// flakyAnswer answers each request a flaky backend gets; n counts the
	// requests of both, from 1. Default: 200 "ok <endpoint>".
	flakyAnswer atomic.Pointer[func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request)]
}

// scriptedBackend is one endpoint of the flaky service: it records the
// attempt number of every request it gets, and answers as the test's
// flakyAnswer says.
type scriptedBackend struct {
	name     string
	mu       sync.Mutex
	attempts []string // X-Envoy-Attempt-Count of each request, in order
	bodies   []int    // the length of each request's body
}

func (b *scriptedBackend) seen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.attempts)
}

func (b *scriptedBackend) bodyLengths() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.bodies)
}

func (m *testMesh) flakyHandler(b *scriptedBackend) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		read, _ := io.Copy(io.Discard, r.Body)
		b.mu.Lock()
		b.attempts = append(b.attempts, r.Header.Get("X-Envoy-Attempt-Count"))
		b.bodies = append(b.bodies, int(read))
		b.mu.Unlock()
		n := m.flakySeen.Add(1)
		if answer := m.flakyAnswer.Load(); answer != nil {
			(*answer)(b, n, w, r)
			return
		}
		io.WriteString(w, "ok "+b.name)
	})
}

// setFlakyAnswer makes the flaky backends answer with fn.
func (m *testMesh) setFlakyAnswer(fn func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request)) {
	m.flakyAnswer.Store(&fn)
}

// upstreamSeen is what the endpoint's ztunnel saw of the waypoint's
// tunnels.
type upstreamSeen struct {
	mu        sync.Mutex
	peers     []spiffeid.ID
	forwarded []netip.AddrPort
	authority []netip.AddrPort
}

func (u *upstreamSeen) add(t *hbone.Tunnel) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.peers = append(u.peers, t.Peer)
	u.forwarded = append(u.forwarded, t.Forwarded)
	u.authority = append(u.authority, t.Authority)
}

func newTestMesh(t testing.TB) *testMesh {
	t.Helper()
	m := &testMesh{ca: testpki.New(t, "cluster.local"), reg: prometheus.NewRegistry(), access: &syncbuf.Buffer{}}
	m.bundle = m.ca.Bundle()
	m.clientID = m.ca.SVID(t, "/ns/a/sa/client")
	snap, err := state.Decode([]byte(testState), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.engine, err = policy.NewEngine(policy.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m.loadIstio(t, istioPolicies)
	backends := m.startBackends(t)
	ztunnelAddr := m.startEndpointZtunnel(t, backends)
	upPool, err := hbone.NewPool(hbone.PoolConfig{Bundle: m.bundle, DialContext: redirect(map[netip.AddrPort]netip.AddrPort{
		netip.AddrPortFrom(webIP, HBONEPort):       ztunnelAddr,
		netip.AddrPortFrom(web2IP, HBONEPort):      ztunnelAddr,
		netip.AddrPortFrom(flakyIPs[0], HBONEPort): ztunnelAddr,
		netip.AddrPortFrom(flakyIPs[1], HBONEPort): ztunnelAddr,
	})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upPool.Close() })
	m.wp, err = New(Config{
		SVID: m.ca.SVID(t, "/ns/shop/sa/waypoint"), Bundle: m.bundle, Policy: m.engine, Pool: upPool,
		Metrics: NewMetrics(m.reg), AccessLog: NewAccessLog(m.access), SniffTimeout: 200e6,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	m.wp.SetState(snap)
	l := listen(t)
	m.wpAddr = l.Addr().(*net.TCPAddr).AddrPort()
	serve(t, func() { m.wp.Serve(l) }, func() { m.wp.Close() })
	if m.clients, err = hbone.NewPool(hbone.PoolConfig{Bundle: m.bundle}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.clients.Close() })
	return m
}

// loadIstio translates AuthorizationPolicy YAML for this waypoint and
// loads it as the engine's only bundle.
func (m *testMesh) loadIstio(t testing.TB, yaml string) {
	t.Helper()
	policies, notes, err := istio.Decode(strings.NewReader(yaml), "policies.yaml")
	if err != nil {
		t.Fatalf("decode: %v %v", err, notes)
	}
	tr, err := istio.Translate(policies, istio.Options{Waypoint: "shop/waypoint"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	m.loadBundleDir(t, dir)
}

func (m *testMesh) loadBundleDir(t testing.TB, dir string) {
	t.Helper()
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.engine.Load(t.Context(), b); err != nil {
		t.Fatal(err)
	}
}

// loadRego loads one hand-written policy module as the only bundle.
func (m *testMesh) loadRego(t testing.TB, module string) {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, ".manifest"), `{"revision": "test", "roots": ["mesh/policies/test"]}`)
	write(t, filepath.Join(dir, "mesh/policies/test/p.rego"), module)
	m.loadBundleDir(t, dir)
}

func write(t testing.TB, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startBackends starts the web workload's servers: HTTP (HTTP/1.1 and
// h2c) echoing what it received, gRPC with the health service, and a TCP
// echo; and the flaky service's two scripted HTTP endpoints. It returns
// their addresses by endpoint address (IP and target port).
func (m *testMesh) startBackends(t testing.TB) map[netip.AddrPort]netip.AddrPort {
	hl, gl, el, tl := listen(t), listen(t), listen(t), listen(t)
	m.slow = make(chan struct{}, 1)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/slow" {
			m.slow <- struct{}{}
			time.Sleep(300 * time.Millisecond)
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-Proto", r.Proto)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Traceparent", r.Header.Get("Traceparent"))
		for _, h := range []string{"Authorization", "X-Jwt-Sub", "X-Token"} {
			w.Header().Set("X-Seen-"+h, r.Header.Get(h))
		}
		io.WriteString(w, "hello "+r.URL.Path+" "+string(body))
	})}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	serve(t, func() { hs.Serve(hl) }, func() { hs.Close() })
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	serve(t, func() { gs.Serve(gl) }, gs.Stop)
	serve(t, func() { echo(el) }, func() { el.Close() })
	serve(t, func() { greet(tl) }, func() { tl.Close() })
	out := map[netip.AddrPort]netip.AddrPort{}
	for port, l := range map[uint16]net.Listener{8080: hl, 9090: gl, 7000: el, 7001: tl} {
		for _, ip := range []netip.Addr{webIP, web2IP} {
			out[netip.AddrPortFrom(ip, port)] = addrOf(l)
		}
	}
	for i, ip := range flakyIPs {
		m.flaky[i] = &scriptedBackend{name: "flaky-" + strconv.Itoa(i+1)}
		fl := listen(t)
		fs := &http.Server{Handler: m.flakyHandler(m.flaky[i]), Protocols: hs.Protocols}
		serve(t, func() { fs.Serve(fl) }, func() { fs.Close() })
		out[netip.AddrPortFrom(ip, 8090)] = addrOf(fl)
	}
	return out
}

// startEndpointZtunnel starts the web endpoint's ztunnel: it accepts
// only the waypoint, records what the tunnel said, and relays to the
// backend for the authority's port.
func (m *testMesh) startEndpointZtunnel(t testing.TB, backends map[netip.AddrPort]netip.AddrPort) netip.AddrPort {
	srv, err := hbone.NewServer(hbone.ServerConfig{
		SVID: m.ca.SVID(t, "/ns/shop/sa/web"), Bundle: m.bundle,
		Handler: hbone.HandlerFunc(func(ctx context.Context, tn *hbone.Tunnel) {
			m.upstream.add(tn)
			backend, ok := backends[tn.Authority]
			if tn.Peer != waypointID || !ok {
				tn.Reject(hbone.ErrDenied)
				return
			}
			up, err := net.Dial("tcp", backend.String())
			if err != nil {
				tn.Reject(hbone.ErrUpstream)
				return
			}
			s, err := tn.Accept()
			if err != nil {
				up.Close()
				return
			}
			hbone.Relay(ctx, s, up)
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t)
	serve(t, func() { srv.Serve(l) }, func() { srv.Close() })
	return addrOf(l)
}

// dial opens a tunnel from the client workload to the waypoint for
// authority, as the client's ztunnel would.
func (m *testMesh) dial(ctx context.Context, authority netip.AddrPort) (net.Conn, error) {
	m.tunnels.Add(1)
	return m.clients.Dial(ctx, hbone.Request{Source: m.clientID, Peer: waypointID, Addr: m.wpAddr, Authority: authority})
}

// dialAs opens a tunnel with another SVID and a Forwarded header.
func (m *testMesh) dialAs(ctx context.Context, svid *x509svid.SVID, authority, forwarded netip.AddrPort) (net.Conn, error) {
	return m.clients.Dial(ctx, hbone.Request{Source: svid, Peer: waypointID, Addr: m.wpAddr, Authority: authority, Forwarded: forwarded})
}

func redirect(to map[netip.AddrPort]netip.AddrPort) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap := netip.MustParseAddrPort(addr)
		real, ok := to[ap]
		if !ok {
			return nil, errors.New("test: no route to " + addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, real.String())
	}
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func addrOf(l net.Listener) netip.AddrPort { return l.Addr().(*net.TCPAddr).AddrPort() }

// serve runs fn until the test ends, then stop.
func serve(t testing.TB, fn, stop func()) {
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, stop)()
		fn()
	})
}

func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// greeting is what greet sends each connection first.
const greeting = "hello from a server-first protocol\n"

// greet serves a server-first protocol: the greeting, then it reads
// what the client sends until the client ends.
func greet(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.WriteString(c, greeting)
			io.Copy(io.Discard, c)
		}()
	}
}

type (
	policyInput    = policy.Input
	policyDecision = policy.Decision
)

var errTestPolicy = errors.New("test: the engine failed")
