package xds_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

const controllerPath = "/ns/regomesh-system/sa/regomesh-controller"

// bed is a controller's xds server on a loopback port, served over mutual
// TLS with SVIDs of a test CA.
type bed struct {
	t    testing.TB
	ca   *testpki.CA
	addr string
	srv  *xds.Server
	gs   *grpc.Server
	done chan struct{}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newBed serves snap on addr; a nil snap leaves the server without a
// state, as a controller that has not listed the cluster yet.
func newBed(t testing.TB, ca *testpki.CA, addr string, snap *state.Snapshot) *bed {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{t: t, ca: ca, addr: l.Addr().String(), done: make(chan struct{})}
	b.srv = xds.New(xds.Config{TrustDomain: ca.TD, Logger: quiet()})
	if snap != nil {
		b.srv.Update(snap)
	}
	b.gs = xds.NewGRPCServer(b.srv, ca.SVID(t, controllerPath), ca.Bundle())
	go func() { defer close(b.done); b.gs.Serve(l) }()
	t.Cleanup(b.stop)
	return b
}

// stop ends the server and every stream; it may be called twice.
func (b *bed) stop() {
	b.gs.Stop()
	<-b.done
	b.srv.Wait()
}

// proxy is a client and the states it applied.
type proxy struct {
	client  *wire.Client
	id      spiffeid.ID
	mu      sync.Mutex
	snap    *state.Snapshot
	applies int
	// bundles are the revisions last handed to ClientConfig.Bundles,
	// bundleCalls how many times it was called.
	bundles     map[string]string
	bundleCalls int
	stop        func()
}

// connect runs a client presenting an SVID for path and subscribing for
// node; it stops when the test ends.
func (b *bed) connect(t testing.TB, path, node string) *proxy {
	t.Helper()
	svid := b.ca.SVID(t, path)
	p := &proxy{id: svid.ID}
	c, err := wire.NewClient(wire.ClientConfig{
		Addr: b.addr, SVID: svid, Bundle: b.ca.Bundle(), Controller: spiffeid.RequireFromPath(b.ca.TD, controllerPath),
		Node: node, TrustDomain: b.ca.TD.Name(), Logger: quiet(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Apply: func(s *state.Snapshot) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.snap, p.applies = s, p.applies+1
		},
		Bundles: func(revs map[string]string) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.bundles, p.bundleCalls = revs, p.bundleCalls+1
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	var once sync.Once
	p.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) state() (*state.Snapshot, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snap, p.applies
}

// waitAcked waits until the proxy has ACKed the server's current version.
func (b *bed) waitAcked(t testing.TB, p *proxy) xds.ProxyStatus {
	t.Helper()
	want := b.srv.Version()
	return waitFor(t, func() (xds.ProxyStatus, bool) {
		st, ok := b.srv.Proxy(p.id.String())
		return st, ok && st.AckedVersion == want && p.client.Version() == want
	}, "proxy %s to ACK version %s", p.id, want)
}

func waitFor[T any](t testing.TB, cond func() (T, bool), what string, args ...any) T {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, ok := cond()
		if ok {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for "+what+"; last: %+v", append(args, v)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mesh builds a state of n workloads spread over nodes, each selected by
// one of services services.
func mesh(t testing.TB, n, nodes, services int) ([]*state.Workload, []*state.Service) {
	var ws []*state.Workload
	var svcs []*state.Service
	for i := range services {
		svcs = append(svcs, &state.Service{
			Name: fmt.Sprintf("svc-%d", i), Namespace: "shop", Hostname: fmt.Sprintf("svc-%d.shop.svc.cluster.local", i),
			VIPs:     []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:    []state.ServicePort{{Port: 80, TargetPort: 8080, AppProtocol: "http"}},
			Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
		})
	}
	for i := range n {
		ws = append(ws, workload(i, nodes, services))
	}
	return ws, svcs
}

func workload(i, nodes, services int) *state.Workload {
	w := &state.Workload{
		UID: fmt.Sprintf("uid-%05d", i), Name: fmt.Sprintf("pod-%d", i), Namespace: "shop", ServiceAccount: "default",
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}, Node: fmt.Sprintf("node-%d", i%nodes),
		Protocol: state.HBONE, TrustDomain: "td.test", Labels: map[string]string{"pod": fmt.Sprint(i)},
	}
	if services > 0 {
		w.Labels["app"] = fmt.Sprintf("app-%d", i%services)
	}
	return w
}

func snapshot(t testing.TB, ws []*state.Workload, svcs []*state.Service) *state.Snapshot {
	t.Helper()
	s, err := state.NewSnapshot(ws, svcs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
