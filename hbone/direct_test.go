package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l := listenLoopback(t, "127.0.0.1:0")
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	testgo.Go(t, func(context.Context) { // ends with l, at the latest
		c, _ := l.Accept()
		accepted <- c
	})
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// Round trips through a stream whose WriteTo writes to a socket are
// delivered by the read loop itself, in order, and counted.
func TestDeliverWritesToSocketDirectly(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, startEcho(t))
	out, in := tcpPair(t)
	total := make(chan int64, 1)
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { s.Close() })()
		n, _ := s.WriteTo(out)
		total <- n
	})
	msg, got := make([]byte, 1024), make([]byte, 1024)
	const rounds = 200
	for i := range rounds {
		for j := range msg {
			msg[j] = byte(i + j)
		}
		if _, err := s.Write(msg); err != nil {
			t.Fatal(err)
		}
		in.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(in, got); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("round %d: echo differs", i)
		}
	}
	if d := s.c.direct.Load(); d == 0 {
		t.Errorf("no byte went straight from the read loop to the socket")
	}
	s.CloseWrite()
	if n := <-total; n != rounds*1024 {
		t.Errorf("WriteTo total %d, want %d", n, rounds*1024)
	}
}

// A receiver that does not read for a while fills its socket buffer: the
// rest queues in the stream and WriteTo drains it, and all of it arrives
// intact and in order, whichever path each piece took.
func TestDeliverToSlowSocketKeepsOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("large transfer skipped in -short mode")
	}
	m := newMesh(t)
	const size = 64 << 20
	upstream := startTCP(t, func(c *net.TCPConn) {
		io.Copy(c, io.LimitReader(newPattern(3), size))
		c.CloseWrite()
	})
	ts := startServer(t, m, &forward{})
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, upstream)
	defer s.Close()
	out, in := tcpPair(t)
	total := make(chan int64, 1)
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { s.Close() })()
		n, _ := s.WriteTo(out)
		out.CloseWrite()
		total <- n
	})
	time.Sleep(200 * time.Millisecond) // the socket fills; the stream buffers
	h := sha256.New()
	n, err := io.Copy(h, in)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(3), size))
	if n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Fatalf("received %d bytes (want %d), checksum mismatch=%v", n, size, !bytes.Equal(h.Sum(nil), want.Sum(nil)))
	}
	if got := <-total; got != size {
		t.Errorf("WriteTo total %d, want %d", got, size)
	}
	if s.c.direct.Load() == 0 {
		t.Errorf("no byte went straight to the socket")
	}
}

// Many tunnels echoing bulk data both ways on one connection, with the
// read loops of both ends writing straight to sockets: the read loop must
// never wait for the write lock (to return window), or two ends each
// blocked writing to the other while their read loops wait would stall
// for good.
func TestDirectDeliveryBothWaysManyStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("bulk echo skipped in -short mode")
	}
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	p := newTestPool(t, m)
	echo := startEcho(t)
	const streams, size = 20, 8 << 20
	errs := make(chan error, streams)
	for i := range streams {
		app, zt := tcpPair(t)
		testgo.Go(t, func(ctx context.Context) {
			errs <- echoThroughRelay(ctx, p, m.request(ts, echo), app, zt, byte(10+i), size)
		})
	}
	timeout := time.After(60 * time.Second)
	for range streams {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatalf("the tunnels stalled: %+v", p.Stats())
		}
	}
	if p.Stats().Conns != 1 {
		t.Errorf("pool stats %+v, want every stream on one connection", p.Stats())
	}
}

// echoThroughRelay relays the local TCP connection zt through a tunnel,
// as an outbound ztunnel does, sends size bytes through its other end app
// and checks the echo and the relay's end. It returns once both its
// goroutines have; it touches no *testing.T, so workers may run it.
func echoThroughRelay(ctx context.Context, p *Pool, r Request, app, zt *net.TCPConn, seed byte, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	s, err := p.Dial(ctx, r)
	if err != nil {
		return err
	}
	relayed := make(chan error, 1)
	go func() {
		_, err := Relay(ctx, zt, s)
		relayed <- err
	}()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		io.Copy(app, io.LimitReader(newPattern(seed), size))
		app.CloseWrite()
	}()
	defer func() { <-sent }()
	stop := context.AfterFunc(ctx, func() { app.Close() })
	defer stop()
	h := sha256.New()
	n, err := io.Copy(h, app)
	if err != nil {
		return err
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPattern(seed), size))
	if n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("stream %d: echoed %d of %d bytes, checksum mismatch=%v", seed, n, size, !bytes.Equal(h.Sum(nil), want.Sum(nil)))
	}
	if err := <-relayed; err != nil {
		return fmt.Errorf("stream %d: relay: %w", seed, err)
	}
	return nil
}

// lateRelay accepts a tunnel but starts relaying it only once released,
// so the client's data and its end are buffered before the relay starts.
type lateRelay struct {
	release chan struct{}
	err     chan error
}

func (h *lateRelay) ServeTunnel(ctx context.Context, t *Tunnel) {
	s, up, ok := acceptUpstream(ctx, t, t.Accept)
	if !ok {
		return
	}
	<-h.release
	_, err := Relay(ctx, s, up)
	h.err <- err
}

// Data and END_STREAM that arrived before Relay hands the stream to its
// socket are written out first, then the socket's write side is closed.
func TestSinkDrainsWhatArrivedFirst(t *testing.T) {
	m := newMesh(t)
	got := make(chan string, 1)
	upstream := startTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
		c.Write([]byte("bye"))
		c.CloseWrite()
	})
	h := &lateRelay{release: make(chan struct{}), err: make(chan error, 1)}
	ts := startServer(t, m, h)
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, upstream)
	defer s.Close()
	s.Write([]byte("early"))
	s.CloseWrite()
	time.Sleep(100 * time.Millisecond) // both are in the server's stream buffer
	close(h.release)
	select {
	case b := <-got:
		if b != "early" {
			t.Errorf("upstream read %q, want %q", b, "early")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the data and EOF")
	}
	if b, err := io.ReadAll(s); err != nil || string(b) != "bye" {
		t.Errorf("client read %q, %v; want the upstream's answer and EOF", b, err)
	}
	if err := <-h.err; err != nil {
		t.Errorf("relay: %v", err)
	}
}

// When the socket fails under the sink (the upstream resets), the relay
// ends with the failure and the client's stream is reset, not left hanging.
func TestSinkSocketFailureEndsTheRelay(t *testing.T) {
	m := newMesh(t)
	upstream := startTCP(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 1))
		c.SetLinger(0) // close with RST
	})
	h := &lateRelay{release: make(chan struct{}), err: make(chan error, 1)}
	close(h.release)
	ts := startServer(t, m, h)
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, upstream)
	defer s.Close()
	s.SetWriteDeadline(time.Now().Add(20 * time.Second))
	chunk := make([]byte, 64<<10)
	var werr error
	for sent := 0; werr == nil && sent < 1<<30; sent += len(chunk) {
		_, werr = s.Write(chunk)
	}
	if werr == nil || errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Fatalf("writing into a tunnel whose upstream reset: %v, want the stream reset", werr)
	}
	select {
	case err := <-h.err:
		if err == nil {
			t.Error("the relay ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
}

// Relay between two sockets (both directions through readWhenReady):
// bulk both ways arrives intact, each side's end is carried across as a
// half-close, and the counts are the bytes moved.
func TestRelayBetweenSockets(t *testing.T) {
	appClient, relayClient := tcpPair(t)
	relayServer, appServer := tcpPair(t)
	const up, down = 8<<20 + 17, 3<<20 + 5
	type result struct {
		counts Counts
		err    error
	}
	relayed := make(chan result, 1)
	testgo.Go(t, func(ctx context.Context) {
		c, err := Relay(ctx, relayClient, relayServer)
		relayed <- result{c, err}
	})
	send := func(c *net.TCPConn, seed byte, n int64) {
		io.Copy(c, io.LimitReader(newPattern(seed), n))
		c.CloseWrite()
	}
	sum := func(seed byte, n int64) []byte {
		h := sha256.New()
		io.Copy(h, io.LimitReader(newPattern(seed), n))
		return h.Sum(nil)
	}
	testgo.Go(t, func(context.Context) { send(appClient, 21, up) })
	testgo.Go(t, func(context.Context) { send(appServer, 22, down) })
	received := func(c *net.TCPConn) ([]byte, int64) {
		h := sha256.New()
		n, err := io.Copy(h, c) // returns at the relayed EOF
		if err != nil {
			t.Error(err) // t outlives this: the goroutines are waited for
		}
		return h.Sum(nil), n
	}
	type got struct {
		sum []byte
		n   int64
	}
	atServer := make(chan got, 1)
	testgo.Go(t, func(context.Context) { s, n := received(appServer); atServer <- got{s, n} })
	s, n := received(appClient)
	if n != down || !bytes.Equal(s, sum(22, down)) {
		t.Errorf("client received %d bytes (want %d), intact=%v", n, down, bytes.Equal(s, sum(22, down)))
	}
	g := <-atServer
	if g.n != up || !bytes.Equal(g.sum, sum(21, up)) {
		t.Errorf("server received %d bytes (want %d), intact=%v", g.n, up, bytes.Equal(g.sum, sum(21, up)))
	}
	r := <-relayed
	if r.err != nil || r.counts != (Counts{FromClient: up, FromServer: down}) {
		t.Errorf("Relay = %+v, %v; want counts {%d %d} and no error", r.counts, r.err, up, down)
	}
}
