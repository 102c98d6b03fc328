// Package accept keeps accept loops alive through transient failures.
//
// A listener's Accept fails for reasons that pass: the process or the
// system is out of file descriptors (EMFILE, ENFILE), out of buffers, or a
// connection was aborted before it was taken. A loop that returns on such
// an error leaves its listener open and unserved: the pod's traffic is
// black-holed until the process restarts. Backoff waits instead, as
// net/http's Server does: 5 ms after the first failure, doubling up to a
// second, back to nothing after the next success.
package accept

import (
	"context"
	"errors"
	"net"
	"time"
)

const (
	firstDelay = 5 * time.Millisecond
	maxDelay   = time.Second
)

// Backoff paces one accept loop's retries. The zero value is ready.
type Backoff struct {
	delay time.Duration
}

// Retry reports whether the loop should call Accept again after err. It
// is false once the listener is closed or ctx is done; otherwise it waits
// the next delay first (returning false if ctx ends meanwhile).
func (b *Backoff) Retry(ctx context.Context, err error) bool {
	if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return false
	}
	if b.delay == 0 {
		b.delay = firstDelay
	} else {
		b.delay = min(2*b.delay, maxDelay)
	}
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Delay is how long the last Retry waited; zero after Reset.
func (b *Backoff) Delay() time.Duration { return b.delay }

// Reset records a successful Accept: the next failure waits firstDelay.
func (b *Backoff) Reset() { b.delay = 0 }
