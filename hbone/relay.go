package hbone

import (
	"context"
	"io"
	"net"
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
	// An idle connection waits in Read holding its buffer, so it starts
	// small and takes the full-size buffer only once a read fills the small
	// one (bulk), giving it back when reads go short again: thousands of
	// idle tunnels then cost a few KiB each instead of 64 KiB.
	var big *[]byte
	defer func() {
		if big != nil {
			relayBuffers.Put(big)
		}
	}()
	small := smallBuffers.Get().(*[]byte)
	defer smallBuffers.Put(small)
	buf := *small
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		switch { // the next read's buffer; buf is written out by now
		case big == nil && n == len(buf):
			big = relayBuffers.Get().(*[]byte)
		case big != nil && n < smallBufferSize:
			relayBuffers.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		buf = *small
		if big != nil {
			buf = *big
		}
	}
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
