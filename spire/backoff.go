package spire

import (
	"math/rand/v2"
	"time"
)

// backoff is an exponential backoff with full jitter between min and max.
// It is not safe for concurrent use: each stream owns one.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, next: min}
}

// delay returns how long to wait before the next attempt, and doubles the
// delay after it, up to max.
func (b *backoff) delay() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d/2 + rand.N(d/2+1)
}

// reset starts over from min, after an attempt that worked.
func (b *backoff) reset() { b.next = b.min }
