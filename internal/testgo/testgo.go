// Package testgo starts goroutines that their test waits for.
//
// A goroutine that outlives its test can report into a finished test
// (which panics or fails a later one), or touch what the test's cleanups
// already removed: a temporary directory, a listener, a network
// namespace. testgo.Go makes waiting the default: the test does not end
// until every goroutine it started has returned.
package testgo

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// patience is how long a cleanup waits before it reports a goroutine that
// did not return when its test ended; it then goes on waiting.
const patience = time.Minute

// Go runs fn on a new goroutine and makes t wait for it: a cleanup
// registered now blocks until fn has returned. fn receives t.Context(),
// which is cancelled when the test function returns, before any cleanup
// runs, so fn must return once ctx is done; where fn blocks in something
// that takes no context (Accept, Read), it closes that with
// context.AfterFunc(ctx, ...). A goroutine still running a minute after
// its test ended fails the test, naming where it was started, and is still
// waited for.
//
// Go may be called from the test's goroutine or from one that Go started
// (an accept loop starting a goroutine per connection). The returned
// channel is closed when fn returns, for a test that waits for it before
// it ends.
func Go(t testing.TB, fn func(ctx context.Context)) <-chan struct{} {
	t.Helper()
	_, file, line, _ := runtime.Caller(1)
	done := make(chan struct{})
	ctx := t.Context()
	t.Cleanup(func() {
		select {
		case <-done:
			return
		case <-time.After(patience):
		}
		t.Errorf("testgo: the goroutine started at %s:%d is still running %v after its test ended; waiting for it", file, line, patience)
		<-done
	})
	go func() {
		defer close(done)
		fn(ctx)
	}()
	return done
}

// eventualPatience bounds Eventually: generous, for a machine whose cores
// other tests keep busy.
const eventualPatience = 30 * time.Second

// Eventually polls cond until it holds, and fails t, naming what it
// waited for, if it has not after a generous bound: a test waits for an
// event, never for a duration it hopes is long enough.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventualPatience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", eventualPatience, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
