package accept

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/fdtest"
)

// A loop that runs out of file descriptors keeps its listener and takes
// the waiting connections once descriptors are free again. The failure is
// real: the process's descriptor limit is lowered to what it holds.
func TestRetryOutlastsDescriptorExhaustion(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const clients = 3
	var conns []net.Conn
	for range clients { // completed by the kernel, waiting in the backlog
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}

	restore := fdtest.Exhaust(t)
	accepted := make(chan net.Conn, clients)
	failures := make(chan error, 64)
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		var b Backoff
		for {
			c, err := l.Accept()
			if err != nil {
				select {
				case failures <- err:
				default:
				}
				if !b.Retry(ctx, err) {
					return
				}
				continue
			}
			b.Reset()
			accepted <- c
		}
	}()
	var first error
	select {
	case first = <-failures:
	case <-time.After(10 * time.Second):
		t.Fatal("Accept never failed with the descriptor limit lowered")
	}
	restore()
	if !errors.Is(first, syscall.EMFILE) {
		t.Errorf("Accept failed with %v, want EMFILE", first)
	}
	for i := range clients {
		select {
		case c := <-accepted:
			c.Close()
		case <-time.After(10 * time.Second):
			t.Fatalf("accepted %d of %d connections after descriptors were freed", i, clients)
		}
	}
	l.Close()
	<-loopDone
	cancel()
}

func TestRetryStops(t *testing.T) {
	var b Backoff
	if b.Retry(context.Background(), net.ErrClosed) {
		t.Error("Retry after net.ErrClosed, want the loop to end")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b.Retry(ctx, syscall.EMFILE) {
		t.Error("Retry with ctx done, want the loop to end")
	}
	for _, want := range []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond} {
		if !b.Retry(context.Background(), syscall.EMFILE) || b.Delay() != want {
			t.Errorf("Delay = %v, want %v", b.Delay(), want)
		}
	}
	b.delay = 800 * time.Millisecond
	b.Retry(context.Background(), syscall.EMFILE)
	if b.Delay() != time.Second {
		t.Errorf("Delay = %v, want the 1s cap", b.Delay())
	}
	b.Reset()
	if b.Delay() != 0 {
		t.Errorf("Delay after Reset = %v", b.Delay())
	}
}
