package testgo

import (
	"context"
	"sync/atomic"
	"testing"
)

// The test's cleanups run only after every goroutine Go started has
// returned, including one started from another such goroutine, and each
// sees its context end when the test function returns.
func TestGoIsWaitedFor(t *testing.T) {
	var returned atomic.Int64
	t.Run("inner", func(t *testing.T) {
		t.Cleanup(func() {
			if n := returned.Load(); n != 2 {
				t.Errorf("a cleanup registered before the goroutines ran with %d of 2 returned", n)
			}
		})
		started := make(chan struct{})
		Go(t, func(ctx context.Context) {
			Go(t, func(ctx context.Context) {
				<-ctx.Done()
				returned.Add(1)
			})
			close(started)
			<-ctx.Done()
			returned.Add(1)
		})
		<-started
	})
	if n := returned.Load(); n != 2 {
		t.Errorf("%d of 2 goroutines returned when their test ended", n)
	}
}

func TestGoDoneChannel(t *testing.T) {
	done := Go(t, func(context.Context) {})
	<-done
	select {
	case <-done:
	default:
		t.Error("done is not closed after fn returned")
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("polled %d times, want 3: Eventually returns as soon as cond holds", n)
	}
}
