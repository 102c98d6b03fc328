package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// Stream is one tunnel: an HTTP/2 CONNECT stream used as a net.Conn.
// Close closes both directions; CloseWrite ends only ours (the peer reads
// EOF) while reading goes on, as on a TCP connection.
//
// Read, Write and their deadlines may be used from different goroutines,
// like a net.Conn's. Stream also implements io.WriterTo, handing received
// data to the writer without an intermediate copy (Relay uses it).
type Stream struct {
	c  *conn
	id uint32

	readMu  sync.Mutex // one Read at a time
	writeMu sync.Mutex // one Write or CloseWrite at a time, so frames keep their order

	// Guarded by c.mu.
	sendWindow int64
	recvWindow int64
	sentEnd    bool // END_STREAM or RST_STREAM sent
	recvEnd    bool // END_STREAM or RST_STREAM received
	finished   bool // both ends done: out of the map and the active count
	sendErr    error

	// Guarded by rmu: what Read sees.
	rmu         sync.Mutex
	buf         recvBuffer
	eof         bool
	readErr     error
	unacked     int64 // bytes read and not yet returned to the peer's window
	closedLocal bool
	// lent: WriteTo is handing the first chunk to its writer unlocked, so
	// a discard meanwhile must not recycle it; it sets discarded instead,
	// and WriteTo releases the buffer when the writer returns.
	lent, discarded bool
	// sink is where received data goes when it is a socket: WriteTo's
	// writer, or the destination of sinkTo. readLoop writes data there
	// itself while nothing is buffered (see deliver); sunk counts the bytes
	// written to it other than by WriteTo's own loop.
	sink syscall.RawConn
	sunk int64
	// sinkTo's state (see sink.go): the socket, whether a drain goroutine
	// is writing the buffer to it, and whom to tell when it has ended.
	sinkConn net.Conn
	draining bool
	sinkErr  error // the socket's write failure
	sinkDone func(n int64, err error)

	readable chan struct{} // signalled when buf, eof or readErr change
	writable chan struct{} // signalled when a send window grows or sendErr is set

	// Client side: the CONNECT response.
	respOnce sync.Once
	resp     chan struct{} // closed when status or respErr is set
	status   int
	respErr  error

	// Server side: the handler's context, cancelled when the stream is
	// closed or reset or the connection ends, with that as its cause
	// (context.Cause). Set before the stream is visible to others.
	ctx    context.Context
	cancel context.CancelCauseFunc

	rdl, wdl deadline
}

// errRefused marks a stream the server never processed (REFUSED_STREAM,
// GOAWAY): the pool may retry it on another connection.
var errRefused = errors.New("hbone: stream refused before processing")

var errStreamClosed = fmt.Errorf("hbone: stream closed: %w", net.ErrClosed)

// resetErrors are the errors of streams the peer reset, by RST_STREAM
// code, made once: closing streams is on the hot path.
var resetErrors = func() map[http2.ErrCode]error {
	m := make(map[http2.ErrCode]error)
	for code := http2.ErrCodeNo; code <= http2.ErrCodeHTTP11Required; code++ {
		err := fmt.Errorf("%w: %v", ErrStreamReset, code)
		if code == http2.ErrCodeRefusedStream {
			err = fmt.Errorf("%w: %w", errRefused, err)
		}
		m[code] = err
	}
	return m
}()

func resetError(code http2.ErrCode) error {
	if err, ok := resetErrors[code]; ok {
		return err
	}
	return fmt.Errorf("%w: %v", ErrStreamReset, code)
}

func (c *conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{
		c:          c,
		id:         id,
		sendWindow: c.peerInitWindow,
		recvWindow: int64(c.cfg.StreamWindow),
		readable:   make(chan struct{}, 1),
		writable:   make(chan struct{}, 1),
		resp:       make(chan struct{}),
	}
	if c.baseCtx != nil {
		s.ctx, s.cancel = context.WithCancelCause(c.baseCtx)
	}
	c.streams[id] = s
	if !c.client {
		c.active++
		if c.idleTimer != nil {
			c.idleTimer.Stop()
		}
	}
	return s
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Stream) wakeWriter() { signal(s.writable) }

// deliver hands data received for the stream to its reader (readLoop
// only). When the reader is a socket (WriteTo's writer, or sinkTo's) and
// nothing is buffered, deliver writes the data to that socket itself,
// without blocking: waking a goroutine to do it costs more than the
// write on a busy machine, and a round trip through the mesh would pay
// that twice. Whatever the socket does not take at once is buffered for
// WriteTo or sinkTo's drain goroutine, and every later delivery queues
// behind it, so bytes keep their order and a slow receiver never stalls
// the read loop.
func (s *Stream) deliver(data []byte, end bool) {
	s.rmu.Lock()
	if s.closedLocal {
		s.rmu.Unlock()
		s.c.creditConn(len(data))
		return
	}
	var sunk int
	if s.sink != nil && s.buf.n == 0 && !s.lent && len(data) > 0 {
		sunk = writeNow(s.sink, data)
		s.sunk += int64(sunk)
		data = data[sunk:]
	}
	s.buf.write(data)
	if end {
		s.eof = true
	}
	drain := s.startDrainLocked()
	s.rmu.Unlock()
	if sunk > 0 {
		s.c.direct.Add(int64(sunk))
		s.consumed(sunk)
	}
	if drain {
		go s.drain()
	}
	if len(data) > 0 || end {
		signal(s.readable)
		s.settleSink()
	}
}

// writeNow makes one non-blocking write of p to rc and returns how much
// it took: 0 when the socket buffer is full or the socket failed (WriteTo
// then meets the failure itself, with the data still buffered).
func writeNow(rc syscall.RawConn, p []byte) int {
	var n int
	rc.Write(func(fd uintptr) bool {
		n, _ = syscall.Write(int(fd), p)
		return true // one attempt: never wait for room in the read loop
	})
	return max(n, 0)
}

// fail ends the stream with err: reads return it once the buffer is
// drained, writes return it at once, a pending CONNECT fails with it.
func (s *Stream) fail(err error) {
	s.rmu.Lock()
	if s.readErr == nil && !s.eof {
		s.readErr = err
	}
	s.rmu.Unlock()
	s.c.mu.Lock()
	if s.sendErr == nil {
		s.sendErr = err
	}
	s.c.mu.Unlock()
	s.respOnce.Do(func() { s.respErr = err; close(s.resp) })
	if s.cancel != nil {
		s.cancel(err)
	}
	signal(s.readable)
	signal(s.writable)
	s.settleSink()
}

// respond records the CONNECT response status (client side).
func (s *Stream) respond(status int) {
	s.respOnce.Do(func() { s.status = status; close(s.resp) })
}

// finishLocked retires a stream whose both directions are done. Call with c.mu held.
func (c *conn) finishLocked(s *Stream) {
	if s.finished || !s.sentEnd || !s.recvEnd {
		return
	}
	s.finished = true
	delete(c.streams, s.id)
	c.active--
	c.armIdleLocked()
	if c.goingAway && c.active == 0 {
		// Through the write lock: whoever finished the stream may be about
		// to write its last frame (closeWriteLocked retires the stream
		// before its END_STREAM goes out), which must reach the peer
		// before the connection closes.
		go func() {
			c.lockWrite()
			c.unlockWrite()
			c.close(fmt.Errorf("%w: drained after GOAWAY", ErrConnClosed))
		}()
	}
}

// retireLocked ends both directions of s on our side and frees its slot.
// Call with mu held.
func (c *conn) retireLocked(s *Stream) {
	s.sentEnd, s.recvEnd = true, true
	c.finishLocked(s)
}

// resetStream ends a stream abruptly and tells the peer with code, in the
// order that keeps the server's count of open streams from running behind
// the client's: a server frees the slot before the RST_STREAM can reach
// the client; a client queues the RST_STREAM before it frees the slot,
// so a stream opened in that slot goes out after it (openStream writes
// the queue first).
func (c *conn) resetStream(id uint32, code http2.ErrCode, err error) {
	if c.client {
		c.writeRST(id, code)
		c.endStream(id, err)
		return
	}
	c.endStream(id, err)
	c.writeRST(id, code)
}

// endStream ends a stream abruptly on our side only, dropping what it had
// received: we reset it, or the peer never saw it (a peer's reset is
// peerReset, which keeps the data).
func (c *conn) endStream(id uint32, err error) {
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.retireLocked(s)
	}
	c.mu.Unlock()
	if s != nil {
		s.fail(err)
		s.discard()
	}
}

// peerReset ends a stream the peer reset (RST_STREAM). What the peer sent
// before the reset stays readable, as x/net's streams keep it: a reader
// meets the reset only after those bytes, and a relay writes them out
// first. Their window credit returns as they are read, or when the
// stream is closed (Close discards what is left).
func (c *conn) peerReset(id uint32, err error) {
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.retireLocked(s)
	}
	c.mu.Unlock()
	if s != nil {
		s.fail(err)
	}
}

// creditConn returns n bytes of connection window to the peer for data
// nobody will read, batching small amounts.
func (c *conn) creditConn(n int) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	c.recvUnacked += int64(n)
	incr := c.takeConnCreditLocked()
	c.mu.Unlock()
	if incr > 0 {
		c.writeWindowUpdates(incr, 0, 0)
	}
}

// takeConnCreditLocked returns the connection window increment to send,
// once enough has been consumed to be worth a frame (a quarter window). A
// window cut short by its budget grows back towards ConnWindow here, as
// far as the budget has room again.
func (c *conn) takeConnCreditLocked() uint32 {
	if c.recvUnacked < c.window/4 {
		return 0
	}
	incr := c.recvUnacked
	c.recvUnacked = 0
	if c.window < int64(c.cfg.ConnWindow) && c.levels != nil && c.err == nil {
		grow := c.levels.takeWindow(int64(c.cfg.ConnWindow) - c.window)
		c.window += grow
		incr += grow
	}
	c.recvWindow += incr
	return uint32(incr)
}

// consumed returns n read bytes to both windows.
func (s *Stream) consumed(n int) {
	c := s.c
	c.mu.Lock()
	c.recvUnacked += int64(n)
	connIncr := c.takeConnCreditLocked()
	var streamIncr uint32
	if !s.recvEnd {
		s.rmu.Lock()
		s.unacked += int64(n)
		if s.unacked >= int64(c.cfg.StreamWindow)/4 {
			streamIncr = uint32(s.unacked)
			s.recvWindow += s.unacked
			s.unacked = 0
		}
		s.rmu.Unlock()
	}
	c.mu.Unlock()
	if connIncr > 0 || streamIncr > 0 {
		c.writeWindowUpdates(connIncr, s.id, streamIncr)
	}
}

// discard drops unread data, crediting the connection window.
func (s *Stream) discard() {
	s.rmu.Lock()
	n := s.buf.n
	if s.lent {
		s.discarded = true // WriteTo releases it once its writer returns
	} else {
		s.buf.release()
	}
	s.rmu.Unlock()
	s.c.creditConn(n)
}

// Read reads tunnel bytes; io.EOF once the peer closed its direction.
func (s *Stream) Read(p []byte) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	for {
		s.rmu.Lock()
		if s.buf.n > 0 {
			n := s.buf.read(p)
			s.rmu.Unlock()
			s.consumed(n)
			return n, nil
		}
		err := s.readErrLocked()
		s.rmu.Unlock()
		if err != nil || len(p) == 0 {
			return 0, err
		}
		if err := s.waitReadable(); err != nil {
			return 0, err
		}
	}
}

func (s *Stream) readErrLocked() error {
	switch {
	case s.closedLocal:
		return net.ErrClosed
	case s.readErr != nil:
		return s.readErr
	case s.eof:
		return io.EOF
	}
	return nil
}

func (s *Stream) waitReadable() error {
	select {
	case <-s.readable:
		return nil
	case <-s.rdl.wait():
		return os.ErrDeadlineExceeded
	}
}

// WriteTo writes the tunnel's bytes to w until EOF, handing w the
// stream's buffered chunks directly. When w is a socket (a syscall.Conn
// such as *net.TCPConn), the read loop also writes to it directly while
// WriteTo waits; the total counts those bytes too.
func (s *Stream) WriteTo(w io.Writer) (total int64, err error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if sc, ok := w.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s.rmu.Lock()
			s.sink = rc
			s.rmu.Unlock()
			defer func() {
				s.rmu.Lock()
				s.sink = nil
				total += s.sunk
				s.sunk = 0
				s.rmu.Unlock()
			}()
		}
	}
	for {
		s.rmu.Lock()
		chunk := s.buf.peek()
		err := s.readErrLocked()
		s.lent = len(chunk) > 0
		s.rmu.Unlock()
		if len(chunk) == 0 {
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, err
			}
			if err := s.waitReadable(); err != nil {
				return total, err
			}
			continue
		}
		// Only this goroutine (holding readMu) removes data, readLoop only
		// appends after it, and discard leaves a lent chunk alone, so chunk
		// stays valid unlocked.
		n, werr := w.Write(chunk)
		total += int64(n)
		if s.giveBack(n) {
			return total, net.ErrClosed // discarded meanwhile, window already credited
		}
		s.consumed(n)
		if werr != nil {
			return total, werr
		}
	}
}

// giveBack ends WriteTo's loan of the first chunk after n bytes were
// written from it. It reports whether the stream discarded its data
// meanwhile, in which case the buffer is released now.
func (s *Stream) giveBack(n int) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.lent = false
	if s.discarded {
		s.discarded = false
		s.buf.release()
		return true
	}
	s.buf.discard(n)
	return false
}

// Write sends p, as DATA frames within the peer's flow-control windows.
func (s *Stream) Write(p []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	written := 0
	for written < len(p) {
		n, err := s.reserveSend(len(p) - written)
		if err != nil {
			return written, err
		}
		if err := s.c.writeData(s.id, p[written:written+n], false); err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

// reserveSend waits until some window is open and takes up to want bytes
// of it, at most one frame's worth.
func (s *Stream) reserveSend(want int) (int, error) {
	c := s.c
	for {
		c.mu.Lock()
		if err := s.sendErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		n := min(int64(want), s.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
		if n > 0 {
			s.sendWindow -= n
			c.sendWindow -= n
			c.mu.Unlock()
			return int(n), nil
		}
		c.mu.Unlock()
		select {
		case <-s.writable:
		case <-s.wdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

func (s *Stream) sendErrLocked() error {
	switch {
	case s.sendErr != nil:
		return s.sendErr
	case s.sentEnd:
		return fmt.Errorf("hbone: write after CloseWrite: %w", net.ErrClosed)
	}
	return nil
}

// CloseWrite ends our direction: the peer reads EOF after the bytes
// already written. Reading goes on.
func (s *Stream) CloseWrite() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.sentEnd {
		c.mu.Unlock()
		return nil
	}
	if err := s.sendErr; err != nil {
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	return s.closeWriteLocked()
}

// closeWriteLocked sends END_STREAM. Call with writeMu held. The stream
// is marked ended (and retired, if the peer has ended too) under wmu,
// before the frame goes out: the peer cannot open the slot's next stream
// before ours is free.
func (s *Stream) closeWriteLocked() error {
	c := s.c
	c.lockWrite()
	c.mu.Lock()
	s.sentEnd = true
	c.finishLocked(s)
	c.mu.Unlock()
	err := c.writeDataLocked(s.id, nil, true)
	if uerr := c.unlockWrite(); err == nil {
		err = uerr
	}
	return err
}

// Close closes both directions. If the peer has finished sending, ours
// ends cleanly (END_STREAM); otherwise the stream is reset (CANCEL), as a
// TCP socket closed with unread data would be.
func (s *Stream) Close() error {
	s.rmu.Lock()
	already := s.closedLocal
	s.closedLocal = true
	s.rmu.Unlock()
	if already {
		return nil
	}
	c := s.c
	c.mu.Lock()
	sent, recv := s.sentEnd, s.recvEnd
	c.mu.Unlock()
	switch {
	case sent && recv:
	case recv && s.writeMu.TryLock(): // no Write in progress: end cleanly
		s.c.mu.Lock()
		sent = s.sentEnd
		s.c.mu.Unlock()
		if !sent {
			s.closeWriteLocked()
		}
		s.writeMu.Unlock()
	default:
		c.resetStream(s.id, http2.ErrCodeCancel, errStreamClosed)
	}
	if s.cancel != nil {
		s.cancel(errStreamClosed)
	}
	s.rdl.release()
	s.wdl.release()
	s.discard()
	signal(s.readable)
	signal(s.writable)
	s.settleSink()
	return nil
}

// LocalAddr is the local address of the carrying connection.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr is the peer address of the carrying connection.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read and WriteTo.
func (s *Stream) SetReadDeadline(t time.Time) error { s.rdl.set(t); return nil }

// SetWriteDeadline sets the deadline for Write.
func (s *Stream) SetWriteDeadline(t time.Time) error { s.wdl.set(t); return nil }

var _ net.Conn = (*Stream)(nil)
