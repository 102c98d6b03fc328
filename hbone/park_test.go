package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// shortIdle makes relay directions park after 50ms without data.
func shortIdle(t *testing.T) {
	old := parkIdleAfter.Load()
	parkIdleAfter.Store(int64(50 * time.Millisecond))
	t.Cleanup(func() { parkIdleAfter.Store(old) })
}

// hijackForward relays each tunnel to its authority as ztunnel does:
// Hijack, StartRelay, return; each relay's outcome goes to ended.
type hijackForward struct {
	ended chan relayed
}

type relayed struct {
	counts Counts
	err    error
}

// nextRelayed waits for a relay's outcome on ended.
func nextRelayed(t *testing.T, ended <-chan relayed) relayed {
	t.Helper()
	select {
	case r := <-ended:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("a relay did not end")
		return relayed{}
	}
}

func (h *hijackForward) ServeTunnel(ctx context.Context, t *Tunnel) {
	s, up, ok := acceptUpstream(ctx, t, t.Hijack)
	if !ok {
		return
	}
	StartRelay(ctx, s, up, func(c Counts, err error) { h.ended <- relayed{c, err} })
}

// settledGoroutines waits until the process's goroutine count has stayed
// the same for 200ms (what was started has parked or ended), for at most
// 20s, and returns it.
func settledGoroutines(t *testing.T) int {
	t.Helper()
	n, same := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(20 * time.Second); same < 20; same++ {
		if time.Now().After(deadline) {
			t.Fatalf("the goroutine count never settled (now %d)", n)
		}
		time.Sleep(10 * time.Millisecond)
		if now := runtime.NumGoroutine(); now != n {
			n, same = now, 0
		}
	}
	return n
}

// Idle tunnels cost no goroutine: the handler returns once the relay is
// started, the direction towards the upstream socket has none (sinkTo),
// and the one reading the socket parks it after parkIdleAfter. A parked
// tunnel carries data again at once, and its half-close ends it cleanly.
func TestIdleTunnelsParkTheirGoroutines(t *testing.T) {
	shortIdle(t)
	m := newMesh(t)
	const n = 50
	h := &hijackForward{ended: make(chan relayed, n+1)}
	ts := startServer(t, m, h)
	p := newTestPool(t, m)
	echo := startEcho(t)
	echoOnce := func(s *Stream, b byte) {
		t.Helper()
		if _, err := s.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 1)
		if _, err := io.ReadFull(s, got); err != nil || got[0] != b {
			t.Fatalf("echo read %q, %v; want %q", got, err, b)
		}
	}
	warm := m.dial(t, p, ts, echo) // the connection and its goroutines
	defer warm.Close()
	echoOnce(warm, 'w')
	before := settledGoroutines(t)
	streams := make([]*Stream, n)
	for i := range streams {
		streams[i] = m.dial(t, p, ts, echo)
		defer streams[i].Close()
		echoOnce(streams[i], 'a')
	}
	// Per tunnel only the echo upstream's serving goroutine is left, once
	// every relay has been idle for parkIdleAfter.
	per := func() float64 { return float64(runtime.NumGoroutine()-before) / n }
	deadline := time.Now().Add(20 * time.Second)
	for per() > 1.1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := per(); got > 1.1 {
		t.Errorf("%.2f goroutines per idle tunnel after 20s, want 1 (the echo server's)", got)
	}
	for _, s := range streams { // woken by the data
		echoOnce(s, 'b')
	}
	for _, s := range streams {
		s.CloseWrite()
		if rest, err := io.ReadAll(s); err != nil || len(rest) != 0 {
			t.Errorf("after CloseWrite read %q, %v; want the upstream's EOF", rest, err)
		}
	}
	for range n {
		if r := nextRelayed(t, h.ended); r.err != nil || r.counts != (Counts{FromClient: 2, FromServer: 2}) {
			t.Errorf("relay ended with %+v, %v; want {2 2} and no error", r.counts, r.err)
		}
	}
}

// A parked relay ends when its context does, and when the far side
// resets: no direction waits forever on a socket nobody reads.
func TestParkedRelayEnds(t *testing.T) {
	shortIdle(t)
	for _, tc := range []struct {
		name string
		end  func(cancel context.CancelFunc, appClient *net.TCPConn)
		want error
	}{
		{"context", func(cancel context.CancelFunc, _ *net.TCPConn) { cancel() }, context.Canceled},
		{"reset", func(_ context.CancelFunc, c *net.TCPConn) { c.SetLinger(0); c.Close() }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			appClient, relayClient := tcpPair(t)
			relayServer, appServer := tcpPair(t)
			defer appClient.Close()
			defer appServer.Close()
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			ended := make(chan relayed, 1)
			StartRelay(ctx, relayClient, relayServer, func(c Counts, err error) { ended <- relayed{c, err} })
			appClient.Write([]byte("hi"))
			if _, err := io.ReadFull(appServer, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond) // both directions parked
			tc.end(cancel, appClient)
			r := nextRelayed(t, ended)
			if r.counts.FromClient != 2 {
				t.Errorf("counts %+v, want 2 bytes from the client", r.counts)
			}
			if tc.want != nil && !errors.Is(r.err, tc.want) {
				t.Errorf("relay error %v, want %v", r.err, tc.want)
			}
			if tc.want == nil && r.err == nil {
				t.Error("relay ended without the reset's error")
			}
			if _, err := appServer.Read(make([]byte, 1)); err == nil {
				t.Error("the server's side is still open after the relay ended")
			}
		})
	}
}

// A relay reports the failure that ended it, also when its context is the
// Handler's and closing the stream ends that context: here the client has
// half-closed, then the workload resets.
func TestHijackedRelayReportsTheReset(t *testing.T) {
	m := newMesh(t)
	h := &hijackForward{ended: make(chan relayed, 1)}
	ts := startServer(t, m, h)
	p := newTestPool(t, m)
	upstream := startTCP(t, func(c *net.TCPConn) {
		io.ReadAll(c)
		c.SetLinger(0)
		c.Close()
	})
	s := m.dial(t, p, ts, upstream)
	defer s.Close()
	if _, err := s.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if r := nextRelayed(t, h.ended); !errors.Is(r.err, syscall.ECONNRESET) {
		t.Errorf("relay ended with %v; want the workload's reset", r.err)
	}
}

// A relay ended by its client resetting the tunnel says so: its error is
// the reset (the context's cause), not just "context canceled".
func TestHijackedRelayEndedByClientReset(t *testing.T) {
	m := newMesh(t)
	h := &hijackForward{ended: make(chan relayed, 1)}
	ts := startServer(t, m, h)
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, startEcho(t))
	s.Write([]byte{1})
	io.ReadFull(s, make([]byte, 1))
	s.Close() // nothing received from the server's side yet: RST_STREAM
	if r := nextRelayed(t, h.ended); !errors.Is(r.err, ErrStreamReset) {
		t.Errorf("relay ended with %v; want ErrStreamReset", r.err)
	}
}
