package hbone

import (
	"sync"
	"time"
)

// recvChunkSize is the unit of stream receive buffers. Buffers hold what
// the peer sent and the application has not read yet, so their total is
// bounded by the receive windows; chunks return to a pool once read.
const recvChunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, recvChunkSize); return &b }}

// recvBuffer is a FIFO of pooled chunks. Data is appended after w in the
// last chunk and read from r in the first.
type recvBuffer struct {
	chunks []*[]byte
	r, w   int
	n      int
}

func (b *recvBuffer) write(p []byte) {
	for len(p) > 0 {
		if len(b.chunks) == 0 || b.w == recvChunkSize {
			b.chunks = append(b.chunks, chunkPool.Get().(*[]byte))
			b.w = 0
		}
		last := *b.chunks[len(b.chunks)-1]
		n := copy(last[b.w:], p)
		b.w += n
		b.n += n
		p = p[n:]
	}
}

// peek returns the first contiguous run of buffered bytes.
func (b *recvBuffer) peek() []byte {
	if b.n == 0 {
		return nil
	}
	end := recvChunkSize
	if len(b.chunks) == 1 {
		end = b.w
	}
	return (*b.chunks[0])[b.r:end]
}

// discard drops the first n buffered bytes.
func (b *recvBuffer) discard(n int) {
	for n > 0 {
		first := b.peek()
		if n < len(first) {
			b.r += n
			b.n -= n
			return
		}
		n -= len(first)
		b.n -= len(first)
		b.popFirst()
	}
	if b.n == 0 {
		b.release()
	}
}

func (b *recvBuffer) read(p []byte) int {
	total := 0
	for total < len(p) && b.n > 0 {
		n := copy(p[total:], b.peek())
		b.discard(n)
		total += n
	}
	return total
}

// popFirst recycles the first chunk. It shifts the slice rather than
// reslicing it so its capacity, and the next append, stay allocation-free.
func (b *recvBuffer) popFirst() {
	chunkPool.Put(b.chunks[0])
	n := copy(b.chunks, b.chunks[1:])
	b.chunks[n] = nil
	b.chunks = b.chunks[:n]
	b.r = 0
}

// release returns every chunk to the pool.
func (b *recvBuffer) release() {
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	clear(b.chunks)
	b.chunks = b.chunks[:0]
	b.r, b.w, b.n = 0, 0, 0
}

// deadline is a settable deadline that waiters select on, as net.Pipe's.
// Its zero value is "no deadline"; the channel is made on first use.
//
// One timer serves every deadline set: net/http's server sets and clears
// a read deadline several times per request, and a timer made each time
// (with its closure) was 4% of a waypoint's CPU. The timer's firing closes
// the channel only if the deadline then in force has passed, so a firing
// for a deadline since moved does nothing.
type deadline struct {
	mu       sync.Mutex
	timer    *time.Timer   // made by the first deadline in the future; fires fire
	at       time.Time     // the deadline in force; zero: none
	cancel   chan struct{} // closed when the deadline passes; nil: never set
	released bool          // the stream is closed: the timer is never armed again
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if t.IsZero() {
		d.stop()
		if d.cancel != nil && isClosed(d.cancel) {
			d.cancel = nil
		}
		return
	}
	if d.cancel == nil || isClosed(d.cancel) {
		d.cancel = make(chan struct{})
	}
	dur := time.Until(t)
	if dur <= 0 {
		d.stop()
		close(d.cancel)
		return
	}
	if d.released {
		return // nothing waits on a closed stream's deadline; a timer would keep the stream reachable
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.fire)
		return
	}
	d.timer.Reset(dur)
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
	}
}

// release stops the timer for good, when the stream is closed: a pending
// one would keep the stream reachable until the deadline. A deadline set
// later arms no timer (one already past still closes the channel).
func (d *deadline) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.released = true
	d.stop()
}

// fire closes the channel if the deadline in force has passed: a timer
// that fired for an earlier deadline, reset before fire took the lock,
// finds a later one (which its reset timer will fire for) or none.
//
// A deadline without a monotonic reading is compared on the wall clock:
// if that stepped back since it was set, the timer is armed again for
// what is left, so the deadline still passes.
func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at.IsZero() || d.cancel == nil || isClosed(d.cancel) {
		return
	}
	if left := time.Until(d.at); left > 0 {
		if !d.released && d.timer != nil {
			d.timer.Reset(left) // a firing for an earlier deadline: the same time again, at most
		}
		return
	}
	close(d.cancel)
}

// wait returns a channel closed when the deadline passes (nil, which
// blocks forever in a select, when none is set).
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
