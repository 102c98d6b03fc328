package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
)

// holdOpen accepts every tunnel and keeps it open until release is closed.
func holdOpen(release <-chan struct{}) Handler {
	return HandlerFunc(func(ctx context.Context, t *Tunnel) {
		s, err := t.Accept()
		if err != nil {
			return
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		s.Close()
	})
}

func dialN(t *testing.T, pool *Pool, req Request, n int) []*Stream {
	t.Helper()
	streams := make([]*Stream, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			s, err := pool.Dial(testContext(t), req)
			streams[i] = s
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return streams
}

func TestPoolOpensASecondConnectionForThe101stStream(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, m, holdOpen(release), func(c *ServerConfig) { c.MaxConcurrentStreams = 1000 })
	pool := newTestPool(t, m)
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))

	dialN(t, pool, req, 100)
	if st := pool.Stats(); st != (PoolStats{Conns: 1, Streams: 100}) {
		t.Fatalf("after 100 streams: %+v, want 1 connection", st)
	}
	dialN(t, pool, req, 1)
	if st := pool.Stats(); st != (PoolStats{Conns: 2, Streams: 101}) {
		t.Fatalf("after 101 streams: %+v, want 2 connections", st)
	}
	if n := ts.accepted.Load(); n != 2 {
		t.Errorf("server accepted %d connections, want 2", n)
	}
}

func TestPoolBurstOpensConnectionsOneByOne(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, m, holdOpen(release), func(c *ServerConfig) { c.MaxConcurrentStreams = 1000 })
	pool := newTestPool(t, m)
	dialN(t, pool, m.request(ts, netip.MustParseAddrPort("10.1.0.9:80")), 250)
	if st := pool.Stats(); st != (PoolStats{Conns: 3, Streams: 250}) {
		t.Fatalf("after a burst of 250: %+v, want 3 connections", st)
	}
}

func TestPoolHonoursServerMaxConcurrentStreams(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, m, holdOpen(release), func(c *ServerConfig) { c.MaxConcurrentStreams = 5 })
	pool := newTestPool(t, m)
	dialN(t, pool, m.request(ts, netip.MustParseAddrPort("10.1.0.9:80")), 6)
	if st := pool.Stats(); st != (PoolStats{Conns: 2, Streams: 6}) {
		t.Fatalf("%+v, want 2 connections for 6 streams at 5 per connection", st)
	}
}

func TestPoolKeysBySourceDestinationAndAddress(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, m, holdOpen(release))
	ts2 := startServer(t, m, holdOpen(release))
	pool := newTestPool(t, m)
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))
	other := req
	other.Source = m.ca.SVID(t, "/ns/a/sa/other")
	elsewhere := req
	elsewhere.Addr = ts2.addr
	for _, r := range []Request{req, req, other, elsewhere} {
		dialN(t, pool, r, 1)
	}
	if st := pool.Stats(); st != (PoolStats{Conns: 3, Streams: 4}) {
		t.Fatalf("%+v, want one connection per (source, destination, address)", st)
	}
}

func TestPoolReleasesIdleConnections(t *testing.T) {
	m := newMesh(t)
	release := make(chan struct{})
	ts := startServer(t, m, holdOpen(release))
	pool := newTestPool(t, m, func(c *PoolConfig) { c.Conn.IdleTimeout = 50 * time.Millisecond })
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))

	s := dialN(t, pool, req, 1)[0]
	time.Sleep(150 * time.Millisecond)
	if st := pool.Stats(); st.Conns != 1 {
		t.Fatalf("a connection with an open tunnel was released: %+v", st)
	}
	close(release)
	io.Copy(io.Discard, s) // the server ends the tunnel
	s.Close()
	testgo.Eventually(t, "idle release", func() bool { return pool.Stats().Conns == 0 })
	testgo.Eventually(t, "server side closed", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.conns) == 0
	})
}

// TestPoolSurvivesServerRestart: the server dies and comes back on the
// same address; the next Dial must succeed, never fail on the stale
// pooled connection.
func TestPoolSurvivesServerRestart(t *testing.T) {
	m := newMesh(t)
	echo := startEcho(t)
	ts := startServer(t, m, &forward{})
	pool := newTestPool(t, m)
	req := m.request(ts, echo)
	roundTrip(t, pool, req)

	for i := range 5 {
		ts.Close()
		ts = startServerOn(t, listenLoopback(t, ts.addr.String()), m, &forward{})
		if err := roundTripErr(pool, req); err != nil {
			t.Fatalf("Dial after restart %d: %v", i+1, err)
		}
	}
}

// TestPoolEvictsDeadPeerByPing: the peer vanishes without closing
// anything (a frozen middlebox, a host gone); PING must find it out, fail
// its tunnels and evict the connection, and the next Dial must succeed.
func TestPoolEvictsDeadPeerByPing(t *testing.T) {
	m := newMesh(t)
	echo := startEcho(t)
	ts := startServer(t, m, &forward{})
	px := startFreezer(t, ts.addr)
	// A PING answered late on a busy machine must not evict the live
	// connection (its round trip below would fail): the timeout is
	// generous, and so is the bound on finding the dead peer.
	pool := newTestPool(t, m, func(c *PoolConfig) {
		c.Conn.PingInterval = 100 * time.Millisecond
		c.Conn.PingTimeout = time.Second
	})
	req := m.request(ts, echo)
	req.Addr = px.addr
	s, err := pool.Dial(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, pool, req) // PINGs answered: the connection stays

	px.freeze()
	start := time.Now()
	_, err = io.ReadAll(s)
	if !errors.Is(err, ErrConnClosed) {
		t.Fatalf("tunnel on the dead connection ended with %v, want ErrConnClosed", err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("dead peer found after %v", waited)
	}
	if st := pool.Stats(); st.Conns != 0 {
		t.Fatalf("dead connection still pooled: %+v", st)
	}
	roundTrip(t, pool, req)
}

func TestPoolRefusesAfterClose(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	pool := newTestPool(t, m)
	pool.Close()
	if _, err := pool.Dial(testContext(t), m.request(ts, startEcho(t))); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Dial on a closed pool: %v, want ErrPoolClosed", err)
	}
}

func TestServerShutdownDrainsTunnels(t *testing.T) {
	m := newMesh(t)
	echo := startEcho(t)
	ts := startServer(t, m, &forward{})
	pool := newTestPool(t, m)
	req := m.request(ts, echo)
	s, err := pool.Dial(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	testgo.Go(t, func(ctx context.Context) { done <- ts.Shutdown(ctx) })
	testgo.Eventually(t, "GOAWAY evicts the connection", func() bool { return pool.Stats().Conns == 0 })
	// The open tunnel still works until it ends.
	if _, err := s.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if got, err := io.ReadAll(s); err != nil || string(got) != "still here" {
		t.Fatalf("tunnel during shutdown: %q, %v", got, err)
	}
	s.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// roundTrip opens a tunnel through pool and checks an echo.
func roundTrip(t *testing.T, pool *Pool, req Request) {
	t.Helper()
	if err := roundTripErr(pool, req); err != nil {
		t.Fatal(err)
	}
}

func roundTripErr(pool *Pool, req Request) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := pool.Dial(ctx, req)
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := s.Write([]byte("ping")); err != nil {
		return err
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if string(got) != "ping" {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}

// freezer is a TCP proxy on 127.0.0.1 whose existing connections can be
// frozen: kept open, forwarding nothing, as a vanished peer looks.
type freezer struct {
	addr   netip.AddrPort
	mu     sync.Mutex
	frozen chan struct{} // closed by freeze for the connections open then
}

func startFreezer(t *testing.T, target netip.AddrPort) *freezer {
	t.Helper()
	l := listenLoopback(t, "127.0.0.1:0")
	t.Cleanup(func() { l.Close() })
	f := &freezer{addr: l.Addr().(*net.TCPAddr).AddrPort(), frozen: make(chan struct{})}
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target.String())
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			frozen := f.frozen
			f.mu.Unlock()
			// Both pipes end when the test does: a frozen pipe still
			// reads, and closing the sockets ends its read.
			context.AfterFunc(ctx, func() { c.Close(); up.Close() })
			testgo.Go(t, func(context.Context) { pipeUntilFrozen(up, c, frozen) })
			testgo.Go(t, func(context.Context) { pipeUntilFrozen(c, up, frozen) })
		}
	})
	return f
}

func (f *freezer) freeze() {
	f.mu.Lock()
	close(f.frozen)
	f.frozen = make(chan struct{})
	f.mu.Unlock()
}

func pipeUntilFrozen(dst, src net.Conn, frozen chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if isClosed(frozen) {
			return // drop it, close nothing
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestServerDropsDeadClientByPing: the client vanishes; the server's PING
// finds out and the tunnel's handler context ends, so ztunnel releases
// the upstream connection.
func TestServerDropsDeadClientByPing(t *testing.T) {
	m := newMesh(t)
	ended := make(chan struct{})
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		if _, err := tun.Accept(); err != nil {
			return
		}
		<-ctx.Done()
		close(ended)
	}), func(c *ServerConfig) {
		c.Conn.PingInterval = 100 * time.Millisecond
		c.Conn.PingTimeout = time.Second // a late answer on a busy machine is no death
	})
	px := startFreezer(t, ts.addr)
	pool := newTestPool(t, m, func(c *PoolConfig) { c.Conn.PingInterval = -1 })
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))
	req.Addr = px.addr
	s, err := pool.Dial(testContext(t), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	px.freeze()
	select {
	case <-ended:
	case <-time.After(15 * time.Second):
		t.Fatal("the handler's context did not end after the client vanished")
	}
}

// TestHandlerContextEndsWhenClientResets: closing the client's stream
// early cancels the server handler's context.
func TestHandlerContextEndsWhenClientResets(t *testing.T) {
	m := newMesh(t)
	ended := make(chan struct{})
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		if _, err := tun.Accept(); err != nil {
			return
		}
		<-ctx.Done()
		close(ended)
	}))
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, netip.MustParseAddrPort("10.1.0.9:80")))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context did not end after the client reset the stream")
	}
}
