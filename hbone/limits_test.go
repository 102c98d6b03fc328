package hbone

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/internal/testgo"
)

// refusals counts what ConnConfig.OnRefuse reports.
type refusals struct {
	mu sync.Mutex
	n  map[Refusal]int
}

func (r *refusals) hook(reason Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[Refusal]int{}
	}
	r.n[reason]++
}

func (r *refusals) count(reason Refusal) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// stuckHandlers is a Handler that ignores its context, as one waiting on
// a slow policy check or dial would, until release is closed. It records
// how many ran at once.
type stuckHandlers struct {
	release       chan struct{}
	running, most atomic.Int64
	started       atomic.Int64
}

func (h *stuckHandlers) ServeTunnel(ctx context.Context, t *Tunnel) {
	h.started.Add(1)
	n := h.running.Add(1)
	for m := h.most.Load(); n > m && !h.most.CompareAndSwap(m, n); m = h.most.Load() {
	}
	<-h.release
	h.running.Add(-1)
	t.Reject(ErrDenied)
}

// end releases the handlers and waits for them, so none outlives the test.
func (h *stuckHandlers) end(t *testing.T) {
	close(h.release)
	testgo.Eventually(t, "the handlers to return", func() bool { return h.running.Load() == 0 })
}

// A client that opens and resets streams in a loop (CVE-2023-44487) gets
// no more handlers running than MaxConcurrentStreams, and GOAWAY
// ENHANCE_YOUR_CALM once it has reset 4 times that many more.
func TestRapidResetGoesAwayAndBoundsHandlers(t *testing.T) {
	m := newMesh(t)
	h := &stuckHandlers{release: make(chan struct{})}
	var refused refusals
	ts := startServer(t, m, h, func(c *ServerConfig) { c.Conn.OnRefuse = refused.hook })
	defer h.end(t)

	cl := dialH2(t, m, ts)
	// 100 handlers run, 400 streams wait, and the 501st is one too many.
	const pairs = DefaultMaxStreamsPerConn * (1 + maxWaitingHandlers)
	for i := range uint32(pairs + 1) {
		id := 2*i + 1
		if err := cl.connect(id, "127.0.0.1:80"); err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		if i < pairs {
			if err := cl.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
				t.Fatalf("stream %d: %v", id, err)
			}
		}
	}
	ga := cl.goAway()
	if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
	}
	testgo.Eventually(t, "the first handlers to start", func() bool { return h.started.Load() >= DefaultMaxStreamsPerConn })
	time.Sleep(50 * time.Millisecond) // time enough for more to start, were they allowed to
	if n := h.started.Load(); n != DefaultMaxStreamsPerConn {
		t.Errorf("%d handlers started, want %d (MaxConcurrentStreams)", n, DefaultMaxStreamsPerConn)
	}
	if most := h.most.Load(); most != DefaultMaxStreamsPerConn {
		t.Errorf("%d handlers ran at once, want %d (MaxConcurrentStreams)", most, DefaultMaxStreamsPerConn)
	}
	if n := refused.count(RefusedRapidReset); n != 1 {
		t.Errorf("OnRefuse(%s) called %d times, want 1", RefusedRapidReset, n)
	}
}

// A stream that arrives while every handler slot is held by a stream the
// client reset waits, and is served when one of those handlers returns.
func TestStreamWaitsForAHandler(t *testing.T) {
	m := newMesh(t)
	h := &stuckHandlers{release: make(chan struct{})}
	ts := startServer(t, m, h, func(c *ServerConfig) { c.MaxConcurrentStreams = 2 })
	released := false
	defer func() {
		if !released {
			h.end(t)
		}
	}()

	cl := dialH2(t, m, ts)
	for _, id := range []uint32{1, 3} {
		cl.connect(id, "127.0.0.1:80")
		cl.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	testgo.Eventually(t, "two handlers", func() bool { return h.running.Load() == 2 })
	if err := cl.connect(5, "127.0.0.1:80"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // time enough for a handler to start, were it allowed to
	if n := h.started.Load(); n != 2 {
		t.Fatalf("%d handlers started while 2 were stuck with MaxConcurrentStreams 2, want 2", n)
	}
	h.end(t)
	released = true
	f := cl.next(func(f http2.Frame) bool { return f.Header().StreamID == 5 })
	hf, ok := f.(*http2.MetaHeadersFrame)
	if !ok || hf.PseudoValue("status") != "401" {
		t.Fatalf("stream 5 got %v, want the handler's 401", f)
	}
}

// A client's receive window comes out of the Server's budget, and out of
// the NodeLimits' it shares with other Servers: once they are spent, a
// new connection gets only HTTP/2's 64 KiB, so readers that never read
// cannot pin more than the budget.
func TestWindowBudget(t *testing.T) {
	const window = 512 << 10
	for _, tc := range []struct {
		name string
		conn func(node *NodeLimits) ConnConfig
		// secondOnOther: the second connection goes to another Server
		// sharing the first one's NodeLimits.
		secondOnOther bool
	}{
		{"per server", func(*NodeLimits) ConnConfig {
			return ConnConfig{Limits: Limits{WindowBytes: window}}
		}, false},
		{"per node", func(node *NodeLimits) ConnConfig { return ConnConfig{Node: node} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			node := NewNodeLimits(Limits{WindowBytes: window})
			var refused refusals
			never := HandlerFunc(func(ctx context.Context, tun *Tunnel) {
				if _, err := tun.Hijack(); err != nil { // and never read
					t.Error(err)
				}
			})
			tweak := func(c *ServerConfig) {
				c.Conn = tc.conn(node)
				c.Conn.StreamWindow, c.Conn.ConnWindow = window, window
				c.Conn.OnRefuse = refused.hook
			}
			first := startServer(t, m, never, tweak)
			second := first
			if tc.secondOnOther {
				second = startServer(t, m, never, tweak)
			}
			dst := netip.MustParseAddrPort("127.0.0.1:80")
			if got := sendUntilBlocked(t, m.dial(t, newTestPool(t, m), first, dst)); got != window {
				t.Errorf("first connection took %d bytes unread, want its whole window %d", got, window)
			}
			if got := sendUntilBlocked(t, m.dial(t, newTestPool(t, m), second, dst)); got != initialWindow {
				t.Errorf("second connection took %d bytes unread, want HTTP/2's initial window %d: the budget is spent", got, initialWindow)
			}
			if n := refused.count(RefusedWindow); n != 1 {
				t.Errorf("OnRefuse(%s) called %d times, want 1", RefusedWindow, n)
			}
		})
	}
}

// sendUntilBlocked writes to s until flow control stops it, and returns
// how much went out. The stream is closed.
func sendUntilBlocked(t *testing.T, s *Stream) int {
	t.Helper()
	defer s.Close()
	s.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	n, err := s.Write(make([]byte, 4<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write: %v, want the deadline to stop it", err)
	}
	return n
}

// Connections are counted per client identity and in all, per Server and
// per NodeLimits; one over a limit is refused with GOAWAY, and a closed
// one frees its place.
func TestConnLimits(t *testing.T) {
	for _, tc := range []struct {
		name       string
		limits     Limits
		node       Limits
		otherPeer  bool // the second client has another identity
		want       Refusal
		otherServe bool // the second client dials another Server sharing the NodeLimits
	}{
		{name: "per peer", limits: Limits{ConnsPerPeer: 1}, want: RefusedConnsPerPeer},
		{name: "in all", limits: Limits{Conns: 1}, otherPeer: true, want: RefusedConns},
		{name: "per peer on the node", node: Limits{ConnsPerPeer: 1}, otherServe: true, want: RefusedConnsPerPeer},
		{name: "in all on the node", node: Limits{Conns: 1}, otherPeer: true, otherServe: true, want: RefusedConns},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			var refused refusals
			node := NewNodeLimits(tc.node)
			tweak := func(c *ServerConfig) {
				c.Conn.Limits, c.Conn.Node, c.Conn.OnRefuse = tc.limits, node, refused.hook
			}
			first := startServer(t, m, &forward{}, tweak)
			second := first
			if tc.otherServe {
				second = startServer(t, m, &forward{}, tweak)
			}
			echo := startEcho(t)
			req := m.request(second, echo)
			if tc.otherPeer {
				req.Source = m.ca.SVID(t, "/ns/c/sa/other")
			}

			p1 := newTestPool(t, m)
			m.dial(t, p1, first, echo).Close()
			p2 := newTestPool(t, m)
			if s, err := p2.Dial(testContext(t), req); err == nil {
				s.Close()
				t.Fatalf("second connection admitted, want it refused (%s)", tc.want)
			}
			if n := refused.count(tc.want); n == 0 {
				t.Errorf("OnRefuse(%s) never called", tc.want)
			}
			p1.Close()
			testgo.Eventually(t, "the first connection's place to free", func() bool {
				s, err := p2.Dial(testContext(t), req)
				if err == nil {
					s.Close()
				}
				return err == nil
			})
		})
	}
}

// A Server closes a connection that carries no stream for IdleTimeout,
// with GOAWAY, and does so by default.
func TestServerClosesIdleConns(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{}, func(c *ServerConfig) { c.Conn.IdleTimeout = 100 * time.Millisecond })
	cl := dialH2(t, m, ts)
	if ga := cl.goAway(); ga.ErrCode != http2.ErrCodeNo {
		t.Errorf("GOAWAY %v, want NO_ERROR", ga.ErrCode)
	}
	if !closedSoon(cl.tc, 5*time.Second) {
		t.Error("the idle connection stayed open after GOAWAY")
	}

	dflt := startServer(t, m, &forward{})
	if got := dflt.cfg.Conn.IdleTimeout; got != DefaultServerIdleTimeout {
		t.Errorf("default server IdleTimeout = %v, want %v", got, DefaultServerIdleTimeout)
	}
}

// Bare TCP connections that never start TLS cannot keep real clients out:
// one address holds at most HandshakesPerIP slots (more are closed at
// once), and at the Handshakes cap the oldest is dropped for the newcomer.
func TestHandshakeCaps(t *testing.T) {
	m := newMesh(t)
	var refused refusals
	ts := startServer(t, m, &forward{}, func(c *ServerConfig) {
		c.Conn.Limits = Limits{Handshakes: 4, HandshakesPerIP: 2}
		c.Conn.OnRefuse = refused.hook
	})
	bare := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		nc, err := d.DialContext(testContext(t), "tcp", ts.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	var held []net.Conn
	for _, from := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"} {
		held = append(held, bare(from))
	}
	testgo.Eventually(t, "four connections accepted", func() bool { return ts.accepted.Load() == 4 })

	if !closedSoon(bare("127.0.0.2"), 2*time.Second) {
		t.Error("a third handshake from one address was not closed at once")
	}
	if n := refused.count(RefusedHandshakesPerIP); n != 1 {
		t.Errorf("OnRefuse(%s) called %d times, want 1", RefusedHandshakesPerIP, n)
	}

	pool := newTestPool(t, m, func(c *PoolConfig) {
		c.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}).DialContext
	})
	start := time.Now()
	m.dial(t, pool, ts, startEcho(t)).Close()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a real client took %v with every handshake slot held, want well under the 10s handshake timeout", took)
	}
	dropped := 0
	for _, nc := range held {
		if closedSoon(nc, 500*time.Millisecond) {
			dropped++
		}
	}
	if dropped != 1 {
		t.Errorf("%d of the 4 bare connections were dropped for the real client, want 1 (the oldest)", dropped)
	}
	if n := refused.count(RefusedHandshakes); n != 1 {
		t.Errorf("OnRefuse(%s) called %d times, want 1", RefusedHandshakes, n)
	}
}
