package hbone

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// Bytes the peer sent before it reset the stream stay readable: the
// reader gets them, then the reset. A server that answers and closes
// while the client is still sending resets the stream (CANCEL), and the
// answer must not be lost with it.
func TestResetKeepsWhatCameBefore(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, tun *Tunnel) {
		s, err := tun.Accept()
		if err != nil {
			return
		}
		s.Write([]byte("the answer"))
		s.Close() // the client has not ended its side: RST_STREAM CANCEL
	}))
	s, err := newTestPool(t, m).Dial(testContext(t), m.request(ts, startEcho(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Writes fail once the reset has arrived; only then read.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := s.Write([]byte("x")); err != nil {
			if !errors.Is(err, ErrStreamReset) {
				t.Fatalf("write failed with %v, want the reset", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no reset within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := io.ReadAll(s)
	if string(got) != "the answer" {
		t.Errorf("read %q after the reset, want %q", got, "the answer")
	}
	if !errors.Is(err, ErrStreamReset) {
		t.Errorf("read ended with %v, want the reset after the data", err)
	}
}
