package hbone

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
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
// either direction, or ctx ending, closes both at once.
//
// Both sides should implement CloseWrite (*net.TCPConn, *tls.Conn and
// *Stream do); for one that does not, the first EOF towards it closes it
// entirely.
func Relay(ctx context.Context, client, server net.Conn) (Counts, error) {
	var counts Counts
	var failure firstError
	fail := func(err error) {
		if err != nil && failure.set(err) {
			client.Close() // unblock the other direction; its error is a consequence
			server.Close()
		}
	}
	// One direction runs on this goroutine. The other is a tunnel's
	// stream towards a socket where there is one (inbound, the client is
	// the stream: it goes to the server; outbound, the other way round),
	// run by the stream's read loop without a goroutine (sinkTo);
	// otherwise it gets a goroutine of its own. Goroutine stacks are most
	// of an idle tunnel's cost, which adds up over thousands.
	fromServerHere := true
	done := make(chan struct{})
	finished := func(n *int64) func(int64, error) {
		return func(written int64, err error) {
			*n = written
			fail(err)
			close(done)
		}
	}
	switch {
	case sinkTo(server, client, finished(&counts.FromClient)):
	case sinkTo(client, server, finished(&counts.FromServer)):
		fromServerHere = false
	default:
		go func() {
			n, err := copyHalf(server, client)
			finished(&counts.FromClient)(n, err)
		}()
	}
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		server.Close()
	})
	var err error
	if fromServerHere {
		counts.FromServer, err = copyHalf(client, server)
	} else {
		counts.FromClient, err = copyHalf(server, client)
	}
	fail(err)
	<-done
	err = failure.get()
	stop()
	client.Close()
	server.Close()
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return counts, err
}

// sinkTo starts src's data towards dst through the stream's read loop
// (Stream.sinkTo) when src is a stream and dst a socket, and reports
// whether it did; done gets the direction's outcome.
func sinkTo(dst, src net.Conn, done func(int64, error)) bool {
	s, ok := src.(*Stream)
	if !ok {
		return false
	}
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	s.sinkTo(dst, rc, done)
	return true
}

// copyHalf copies src to dst until EOF, then ends dst's write side.
func copyHalf(dst, src net.Conn) (int64, error) {
	n, err := copyStream(dst, src)
	if err != nil {
		return n, err
	}
	return n, closeWrite(dst)
}

func copyStream(dst io.Writer, src net.Conn) (int64, error) {
	if s, ok := src.(*Stream); ok {
		return s.WriteTo(dst) // straight from the stream's buffer
	}
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return copyBuffers(dst, func(b *buffers) ([]byte, int, error) { return readWhenReady(rc, b) })
		}
	}
	return copyBuffers(dst, func(b *buffers) ([]byte, int, error) {
		buf := b.take()
		n, err := src.Read(buf)
		return buf, n, err
	})
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

// copyBuffers copies what read returns to dst until EOF. read borrows
// the buffer it reads into from b as late as it can: a socket takes it
// only once data is there (readWhenReady), so an idle tunnel holds no
// buffer at all and a bulk one 64 KiB.
func copyBuffers(dst io.Writer, read func(b *buffers) ([]byte, int, error)) (int64, error) {
	b := &buffers{pool: &smallBuffers}
	defer b.release()
	var total int64
	for {
		buf, n, rerr := read(b)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		b.release()
		b.resize(n)
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
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
