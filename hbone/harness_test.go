package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
)

// mesh is one trust domain with a server workload and a client workload,
// each with its SVID, as two ztunnels would hold them.
type mesh struct {
	ca         *testpki.CA
	bundle     x509bundle.Source
	serverSVID *x509svid.SVID
	clientSVID *x509svid.SVID
}

func newMesh(t testing.TB) *mesh {
	ca := testpki.New(t, "td.test")
	return &mesh{
		ca:         ca,
		bundle:     ca.Bundle(),
		serverSVID: ca.SVID(t, "/ns/b/sa/web"),
		clientSVID: ca.SVID(t, "/ns/a/sa/client"),
	}
}

// testServer is a Server listening on 127.0.0.1.
type testServer struct {
	*Server
	addr     netip.AddrPort
	accepted atomic.Int64 // TCP connections accepted
	l        net.Listener
}

func listenLoopback(t testing.TB, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func startServer(t testing.TB, m *mesh, h Handler, tweak ...func(*ServerConfig)) *testServer {
	t.Helper()
	return startServerOn(t, listenLoopback(t, "127.0.0.1:0"), m, h, tweak...)
}

func startServerOn(t testing.TB, l net.Listener, m *mesh, h Handler, tweak ...func(*ServerConfig)) *testServer {
	t.Helper()
	cfg := ServerConfig{SVID: m.serverSVID, Bundle: m.bundle, Handler: h}
	for _, f := range tweak {
		f(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: srv, addr: l.Addr().(*net.TCPAddr).AddrPort(), l: l}
	t.Cleanup(func() { srv.Close() })
	testgo.Go(t, func(ctx context.Context) {
		stop := context.AfterFunc(ctx, func() { srv.Close() })
		defer stop()
		ts.serve(l)
	})
	return ts
}

// serve is Serve with a count of accepted connections.
func (ts *testServer) serve(l net.Listener) {
	ts.Serve(countingListener{l, &ts.accepted})
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newTestPool(t testing.TB, m *mesh, tweak ...func(*PoolConfig)) *Pool {
	t.Helper()
	cfg := PoolConfig{Bundle: m.bundle}
	for _, f := range tweak {
		f(&cfg)
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// request asks ts for a tunnel to dst as the mesh's client workload.
// dial opens a tunnel through ts to dst on p, or fails the test.
func (m *mesh) dial(t testing.TB, p *Pool, ts *testServer, dst netip.AddrPort) *Stream {
	t.Helper()
	s, err := p.Dial(testContext(t), m.request(ts, dst))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (m *mesh) request(ts *testServer, dst netip.AddrPort) Request {
	return Request{
		Source:    m.clientSVID,
		Peer:      m.serverSVID.ID,
		Addr:      ts.addr,
		Authority: dst,
		Forwarded: netip.MustParseAddrPort("10.1.0.5:40122"),
	}
}

// forward is the Handler a ztunnel's inbound reduces to: dial the
// authority, relay, report.
type forward struct {
	mu     sync.Mutex
	counts []Counts
}

func (f *forward) ServeTunnel(ctx context.Context, t *Tunnel) {
	s, up, ok := acceptUpstream(ctx, t, t.Accept)
	if !ok {
		return
	}
	counts, _ := Relay(ctx, s, up)
	f.mu.Lock()
	f.counts = append(f.counts, counts)
	f.mu.Unlock()
}

// acceptUpstream dials the tunnel's authority and accepts the tunnel
// (t.Accept or t.Hijack), or rejects it with 503 when the dial fails.
func acceptUpstream(ctx context.Context, t *Tunnel, accept func() (*Stream, error)) (*Stream, net.Conn, bool) {
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", t.Authority.String())
	if err != nil {
		t.Reject(errors.Join(ErrUpstream, err))
		return nil, nil, false
	}
	s, err := accept()
	if err != nil {
		up.Close()
		return nil, nil, false
	}
	return s, up, true
}

// startEcho starts a TCP server on 127.0.0.1 that echoes each connection
// until EOF, then closes its write side.
func startEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	return startTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// startTCP serves each accepted connection with serve on 127.0.0.1. The
// listener and the connections close when the test ends, and the test
// waits for every serve to return.
func startTCP(t testing.TB, serve func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	l := listenLoopback(t, "127.0.0.1:0")
	t.Cleanup(func() { l.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			testgo.Go(t, func(ctx context.Context) {
				defer context.AfterFunc(ctx, func() { c.Close() })()
				defer c.Close()
				serve(c.(*net.TCPConn))
			})
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// svidSource returns a fixed SVID, or an error, as a SPIRE-backed source would.
type svidSource struct {
	svid *x509svid.SVID
	err  error
}

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, s.err }

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func idOf(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
