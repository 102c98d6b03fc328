package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/regomesh/regomesh/internal/testgo"
)

// TestHalfCloseClientFirst: the client ends its direction; the upstream
// reads EOF (so the server carried the CloseWrite across), answers, and
// closes; the client reads the answer, then EOF.
func TestHalfCloseClientFirst(t *testing.T) {
	m := newMesh(t)
	upstream := startTCP(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // returns at the tunnel's EOF
		if err != nil {
			return
		}
		c.Write(append([]byte("got "), req...))
		c.CloseWrite()
	})
	ts := startServer(t, m, &forward{})
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, upstream))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("request"))
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "got request" {
		t.Fatalf("answer = %q, %v; want %q", got, err, "got request")
	}
}

// TestHalfCloseServerFirst: the upstream ends its direction first; the
// client reads EOF while its own direction stays open, then sends more,
// which must still arrive.
func TestHalfCloseServerFirst(t *testing.T) {
	m := newMesh(t)
	received := make(chan string, 1)
	upstream := startTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		rest, _ := io.ReadAll(c)
		received <- string(rest)
	})
	ts := startServer(t, m, &forward{})
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, upstream))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	banner, err := io.ReadAll(s)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("banner = %q, %v", banner, err)
	}
	if _, err := s.Write([]byte("after EOF")); err != nil {
		t.Fatalf("write after the peer's EOF: %v", err)
	}
	s.CloseWrite()
	if got := <-received; got != "after EOF" {
		t.Fatalf("upstream received %q, want %q", got, "after EOF")
	}
}

// TestLargeTransferBothWays sends largeTransfer bytes each way at once
// and compares SHA-256 sums at both ends.
func TestLargeTransferBothWays(t *testing.T) {
	if testing.Short() {
		t.Skip("large transfer skipped in -short mode")
	}
	m := newMesh(t)
	type result struct {
		sum [32]byte
		n   int64
	}
	upSum := make(chan result, 1)
	upstream := startTCP(t, func(c *net.TCPConn) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.Copy(c, io.LimitReader(newPattern(2), largeTransfer))
			c.CloseWrite()
		}()
		h := sha256.New()
		n, _ := io.Copy(h, c)
		upSum <- result{[32]byte(h.Sum(nil)), n}
		<-done
	})
	fwd := &forward{}
	ts := startServer(t, m, fwd)
	pool := newTestPool(t, m)
	s, err := pool.Dial(testContext(t), m.request(ts, upstream))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sent := make(chan error, 1)
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { s.Close() })()
		_, err := io.Copy(s, io.LimitReader(newPattern(1), largeTransfer))
		s.CloseWrite()
		sent <- err
	})
	h := sha256.New()
	n, err := io.Copy(h, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if n != largeTransfer || !bytes.Equal(h.Sum(nil), patternSum(t, 2)) {
		t.Errorf("downstream: %d bytes, checksum mismatch=%v", n, !bytes.Equal(h.Sum(nil), patternSum(t, 2)))
	}
	up := <-upSum
	if up.n != largeTransfer || up.sum != [32]byte(patternSum(t, 1)) {
		t.Errorf("upstream: %d bytes, checksum mismatch=%v", up.n, up.sum != [32]byte(patternSum(t, 1)))
	}
	testgo.Eventually(t, "relay counts", func() bool {
		fwd.mu.Lock()
		defer fwd.mu.Unlock()
		return len(fwd.counts) == 1
	})
	if want := (Counts{largeTransfer, largeTransfer}); fwd.counts[0] != want {
		t.Errorf("relay counts %+v, want %+v", fwd.counts[0], want)
	}
}

// newPattern is a fast deterministic byte stream (ChaCha8).
func newPattern(seed byte) io.Reader {
	return rand.NewChaCha8([32]byte{seed})
}

func patternSum(t *testing.T, seed byte) []byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(newPattern(seed), largeTransfer)); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}
