package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Counts are the bytes a Relay moved, for istio_tcp_sent_bytes_total and
// istio_tcp_received_bytes_total.
type Counts struct {
	FromClient int64 // read from client, written to server
	FromServer int64 // read from server, written to client
}

// relayBufferSize is the copy buffer of one direction. With the 9-byte
// HTTP/2 frame header a full buffer becomes a DATA frame of exactly four
// TLS records, so bulk transfers never send a runt record.
const relayBufferSize = 4*recordSize - frameHeaderSize

var relayBuffers = sync.Pool{New: func() any { b := make([]byte, relayBufferSize); return &b }}

// smallBufferSize is what a relay direction reads with until data flows in bulk.
const smallBufferSize = 4 << 10

var smallBuffers = sync.Pool{New: func() any { b := make([]byte, smallBufferSize); return &b }}

// Relay copies bytes both ways between client and server until both
// directions have ended, then closes both. When one side ends its
// direction (EOF), Relay ends the same direction on the other side
// (CloseWrite) and keeps copying the other way, so half-closed
// connections behave as they would without the tunnel. A failure in
// either direction, or ctx ending, closes both at once; to end a relay
// early, end ctx.
//
// Both sides should implement CloseWrite (*net.TCPConn, *tls.Conn and
// *Stream do); for one that does not, the first EOF towards it closes it
// entirely.
func Relay(ctx context.Context, client, server net.Conn) (Counts, error) {
	type result struct {
		counts Counts
		err    error
	}
	ended := make(chan result, 1)
	StartRelay(ctx, client, server, func(c Counts, err error) { ended <- result{c, err} })
	r := <-ended
	return r.counts, r.err
}

// StartRelay is Relay without waiting for it: it returns at once, and done
// is called once, on a goroutine of the relay's, with what Relay would
// have returned, after both sides are closed. The error is the first
// failure: a direction's, or context.Cause(ctx) if ctx ended first.
//
// To end a relay early, end ctx: closing a side directly does not wake a
// direction that is waiting for data without a goroutine (below).
//
// An idle relay has no goroutine (ztunnel holds thousands of them, and a
// goroutine's stack is most of an idle tunnel's cost): a stream's data
// towards a socket is written by the stream's read loop (Stream.sinkTo),
// and the direction reading a socket gives its goroutine up after
// parkIdleAfter without data, to the parker, which starts it again when
// the socket is readable.
func StartRelay(ctx context.Context, client, server net.Conn, done func(Counts, error)) {
	r := &relay{ctx: ctx, client: client, server: server, done: done}
	r.pending.Store(2)
	toServer := r.direction(&r.counts.FromClient, server, client)
	toClient := r.direction(&r.counts.FromServer, client, server)
	r.stop = context.AfterFunc(ctx, func() {
		r.failure.set(context.Cause(ctx)) // a stream reset, not just "canceled"
		r.closeBoth()
	})
	toServer()
	toClient()
}

// relay is one StartRelay: two directions, each ending once.
type relay struct {
	ctx            context.Context
	client, server net.Conn
	done           func(Counts, error)
	stop           func() bool // unregisters the relay from ctx
	counts         Counts      // each direction sets its own field, then ends
	failure        firstError
	pending        atomic.Int32 // directions not ended yet
	pumps          []*pump      // directions reading a socket: maybe parked
}

// direction prepares the copy of src to dst, counted in n, and returns
// what starts it: the stream's read loop when src is a stream and dst a
// socket, else a pump (parkable when src is a socket) on a goroutine.
func (r *relay) direction(n *int64, dst, src net.Conn) func() {
	if s, ok := src.(*Stream); ok {
		if rc, ok := rawConn(dst); ok {
			return func() { s.sinkTo(dst, rc, r.ended(n, false)) }
		}
		return func() {
			go func() {
				written, err := copyHalf(dst, src)
				r.ended(n, true)(written, err)
			}()
		}
	}
	pm := newPump(dst, src, r.ended(n, true))
	if pm.rc != nil {
		pm.parkable = true
		r.pumps = append(r.pumps, pm)
	}
	return func() { go pm.run() }
}

// ended is a direction's end: the first error closes both sides, and the
// last direction to end completes the relay: on the calling goroutine
// when inline, else on a new one (sinkTo's read loop must not block).
func (r *relay) ended(n *int64, inline bool) func(int64, error) {
	call := func(f func()) {
		if inline {
			f()
		} else {
			go f()
		}
	}
	return func(written int64, err error) {
		*n = written
		if err != nil && r.failure.set(err) {
			// Closing a server-side stream ends its context, which may
			// be ctx: that must not count as ctx ending.
			r.stop()
			// Unblock the other direction; its error is a consequence.
			// Closing a stream may write its END_STREAM, which the read
			// loop must not wait to do.
			call(r.closeBoth)
		}
		if r.pending.Add(-1) == 0 {
			call(r.complete)
		}
	}
}

// closeBoth closes both sides and wakes a parked direction, which then
// finds its socket closed and ends.
func (r *relay) closeBoth() {
	r.client.Close()
	r.server.Close()
	if p, err := sharedParker(); err == nil {
		for _, pm := range r.pumps {
			p.unpark(pm)
		}
	}
}

// complete closes both sides and reports the relay's first failure: a
// direction's error, or ctx's cause if ctx ended first.
func (r *relay) complete() {
	r.stop()
	r.client.Close()
	r.server.Close()
	r.done(r.counts, r.failure.get())
}

// rawConn is c's raw socket, if c is a socket.
func rawConn(c net.Conn) (syscall.RawConn, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// copyHalf copies src to dst until EOF, then ends dst's write side, on
// the calling goroutine.
func copyHalf(dst, src net.Conn) (int64, error) {
	if s, ok := src.(*Stream); ok {
		n, err := s.WriteTo(dst) // straight from the stream's buffer
		if err != nil {
			return n, err
		}
		return n, closeWrite(dst)
	}
	var n int64
	var err error
	newPump(dst, src, func(written int64, perr error) { n, err = written, perr }).run()
	return n, err
}

// parkIdleAfter is how long a relay direction waits for data from a
// socket on its own goroutine before it parks the socket. Resuming costs
// a goroutine start and one more wake-up, a few microseconds once per
// idle period; parking saves a goroutine stack for as long as it lasts.
var parkIdleAfter atomic.Int64

func init() { parkIdleAfter.Store(int64(100 * time.Millisecond)) }

// errSocketIdle is a parkable pump's read that saw no data for parkIdleAfter.
var errSocketIdle = errors.New("hbone: socket idle")

// pump copies src to dst until EOF, then ends dst's write side, and calls
// end once with the bytes written and the outcome. A parkable pump hands
// itself to the parker when its socket idles: run returns, and starts
// again on another goroutine when the socket is readable.
type pump struct {
	dst, src net.Conn
	rc       syscall.RawConn // src's socket; nil: plain Read
	end      func(int64, error)
	bufs     buffers
	total    int64
	parkable bool
	// armed: src has a read deadline parkIdleAfter ahead; busy: a read
	// returned data since it was set.
	armed, busy bool
	// parkedID is the parker's registration while parked, else 0;
	// guarded by the parker's mutex.
	parkedID uint64
}

func newPump(dst, src net.Conn, end func(int64, error)) *pump {
	pm := &pump{dst: dst, src: src, end: end, bufs: buffers{pool: &smallBuffers}}
	pm.rc, _ = rawConn(src)
	return pm
}

// run copies until the direction ends or the pump parks. It borrows a
// buffer only for a read that returns data (readWhenReady), so an idle
// direction holds none and a bulk one 64 KiB.
func (pm *pump) run() {
	for {
		buf, n, rerr := pm.read()
		var werr error
		if n > 0 {
			var w int
			w, werr = pm.dst.Write(buf[:n])
			pm.total += int64(w)
		}
		pm.bufs.release()
		if werr != nil {
			pm.end(pm.total, werr)
			return
		}
		pm.bufs.resize(n)
		switch {
		case rerr == errSocketIdle:
			if p, err := sharedParker(); err == nil && p.park(pm) {
				return
			}
			// No parker, or it failed, or the socket was closed (the
			// next read says so): wait here from now on.
			pm.parkable = false
		case rerr == io.EOF:
			pm.end(pm.total, closeWrite(pm.dst))
			return
		case rerr != nil:
			pm.end(pm.total, rerr)
			return
		}
	}
}

// read returns the next data from src, in a buffer borrowed from pm.bufs,
// or errSocketIdle when a parkable pump's socket had none for parkIdleAfter.
// The idle deadline is set once per period, not once per read.
func (pm *pump) read() ([]byte, int, error) {
	if pm.rc == nil {
		buf := pm.bufs.take()
		n, err := pm.src.Read(buf)
		return buf, n, err
	}
	for {
		if pm.parkable && !pm.armed {
			pm.src.SetReadDeadline(time.Now().Add(time.Duration(parkIdleAfter.Load())))
			pm.armed, pm.busy = true, false
		}
		buf, n, err := readWhenReady(pm.rc, &pm.bufs)
		if !pm.parkable || !errors.Is(err, os.ErrDeadlineExceeded) {
			pm.busy = pm.busy || n > 0
			return buf, n, err
		}
		pm.armed = false
		if !pm.busy {
			pm.src.SetReadDeadline(time.Time{})
			return nil, 0, errSocketIdle
		}
	}
}

// buffers lends a copy loop one pooled buffer at a time. It lends small
// ones until a read fills one (bulk), then full-size ones until reads go
// short again.
type buffers struct {
	pool *sync.Pool
	held *[]byte
}

// take lends a buffer; the previous one must have been released.
func (b *buffers) take() []byte {
	b.held = b.pool.Get().(*[]byte)
	return *b.held
}

// release returns the lent buffer, if any.
func (b *buffers) release() {
	if b.held != nil {
		b.pool.Put(b.held)
		b.held = nil
	}
}

// resize picks the pool of the next buffer after a read of n bytes.
func (b *buffers) resize(n int) {
	switch {
	case b.pool == &smallBuffers && n == smallBufferSize:
		b.pool = &relayBuffers
	case b.pool == &relayBuffers && n < smallBufferSize:
		b.pool = &smallBuffers
	}
}

// readWhenReady reads once from a socket, waiting for data without a
// buffer: one is borrowed from b for each read attempt, and one taken for
// a read that would block goes back before the wait.
func readWhenReady(rc syscall.RawConn, b *buffers) (buf []byte, n int, err error) {
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			buf = b.take()
			n, rerr = syscall.Read(int(fd), buf)
			switch rerr {
			case syscall.EINTR:
				b.release()
				continue
			case syscall.EAGAIN:
				b.release()
				buf, n = nil, 0
				return false // wait for readability, holding nothing
			}
			return true
		}
	})
	switch {
	case err != nil: // closed, or a deadline passed
		return nil, 0, err
	case rerr != nil:
		return buf, 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// firstError keeps the first error of a relay: the cause, not the
// consequences it has on the other direction.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false
	}
	f.err = err
	return true
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
