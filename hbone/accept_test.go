package hbone

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/fdtest"
)

// A server that runs out of file descriptors keeps serving its listener:
// it logs, pauses and accepts again once descriptors are free.
func TestServeOutlastsDescriptorExhaustion(t *testing.T) {
	m := newMesh(t)
	failed := make(chan string, 16)
	l := listenLoopback(t, "127.0.0.1:0")
	waiting, err := net.Dial("tcp", l.Addr().String()) // in the backlog when descriptors run out
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()

	restore := fdtest.Exhaust(t)
	ts := startServerOn(t, l, m, &forward{}, func(c *ServerConfig) {
		c.Logger = slog.New(&messages{ch: failed, level: slog.LevelWarn})
	})
	select {
	case msg := <-failed:
		if !strings.Contains(msg, "accept failed") || !strings.Contains(msg, "too many open files") {
			t.Errorf("logged %q, want the accept failure and its cause", msg)
		}
	case <-time.After(10 * time.Second):
		restore()
		t.Fatal("no accept failure logged with descriptors exhausted: did Serve return?")
	}
	restore()

	echo := startEcho(t) // its accept loop would have met the exhaustion too
	s, err := newTestPool(t, m).Dial(testContext(t), m.request(ts, echo))
	if err != nil {
		t.Fatalf("dial after descriptors were freed: %v", err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("still served")); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if got, err := io.ReadAll(s); err != nil || string(got) != "still served" {
		t.Errorf("echo = %q, %v", got, err)
	}
}

// messages sends each record at or above level, with its attributes, to ch
// (dropping records when ch is full).
type messages struct {
	ch    chan<- string
	level slog.Level
	attrs []slog.Attr
}

func (h *messages) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *messages) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	select {
	case h.ch <- b.String():
	default:
	}
	return nil
}

func (h *messages) WithAttrs(as []slog.Attr) slog.Handler {
	return &messages{ch: h.ch, level: h.level, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], as...)}
}

func (h *messages) WithGroup(string) slog.Handler { return h }
