package hbone

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l := listenLoopback(t, "127.0.0.1:0")
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
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
	s, err := p.Dial(testContext(t), m.request(ts, startEcho(t)))
	if err != nil {
		t.Fatal(err)
	}
	out, in := tcpPair(t)
	total := make(chan int64, 1)
	go func() {
		n, _ := s.WriteTo(out)
		total <- n
	}()
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
	s, err := p.Dial(testContext(t), m.request(ts, upstream))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, in := tcpPair(t)
	total := make(chan int64, 1)
	go func() {
		n, _ := s.WriteTo(out)
		out.CloseWrite()
		total <- n
	}()
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
		go func() { errs <- echoThroughRelay(t, p, m.request(ts, echo), byte(10+i), size) }()
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

// echoThroughRelay relays a local TCP connection through a tunnel, as an
// outbound ztunnel does, sends size bytes through it and checks the echo.
func echoThroughRelay(t *testing.T, p *Pool, r Request, seed byte, size int64) error {
	s, err := p.Dial(testContext(t), r)
	if err != nil {
		return err
	}
	app, zt := tcpPair(t)
	go func() {
		if _, err := Relay(testContext(t), zt, s); err != nil {
			t.Logf("relay %d: %v", seed, err)
		}
	}()
	go func() {
		io.Copy(app, io.LimitReader(newPattern(seed), size))
		app.CloseWrite()
	}()
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
	return nil
}
