package hbone

import (
	"net"
	"syscall"
)

// sinkTo hands everything the stream receives to dst, a socket, with no
// goroutine of its own while the socket keeps up: the read loop writes
// each payload with one non-blocking write (deliver), and a drain
// goroutine starts only when the socket falls behind, ending once the
// backlog is written. At the end of the stream dst's write side is closed
// (CloseWrite), and done is called once with the bytes written to dst
// and nil; if the stream fails, is closed, or dst fails, done gets the
// error instead. done may run on the read loop: it must not block.
//
// It is WriteTo without a goroutine waiting in it, which is most of a
// tunnel's idle cost: Relay uses it for the direction towards a socket.
// The stream must not be read otherwise once sinkTo is called.
func (s *Stream) sinkTo(dst net.Conn, rc syscall.RawConn, done func(n int64, err error)) {
	s.rmu.Lock()
	s.sink, s.sinkConn, s.sinkDone = rc, dst, done
	drain := s.startDrainLocked() // data that arrived before us
	s.rmu.Unlock()
	if drain {
		go s.drain()
	}
	s.settleSink() // a stream that ended before us
}

// startDrainLocked reports whether a drain goroutine must start: sinkTo
// is in use, data is buffered and none is running. It marks one running.
// Call with rmu held.
func (s *Stream) startDrainLocked() bool {
	if s.sinkDone == nil || s.draining || s.buf.n == 0 || s.closedLocal {
		return false
	}
	s.draining = true
	return true
}

// drain writes the buffered data to the sink with blocking writes until
// the buffer is empty, then leaves the sink to the read loop again.
func (s *Stream) drain() {
	for {
		s.rmu.Lock()
		chunk := s.buf.peek()
		if len(chunk) == 0 || s.closedLocal {
			s.draining = false
			s.rmu.Unlock()
			s.settleSink()
			return
		}
		s.lent = true // see WriteTo: the chunk stays valid unlocked
		dst := s.sinkConn
		s.rmu.Unlock()
		n, werr := dst.Write(chunk)
		if s.giveBack(n) {
			s.rmu.Lock()
			s.draining = false
			s.rmu.Unlock()
			s.settleSink() // closed meanwhile
			return
		}
		s.rmu.Lock()
		s.sunk += int64(n)
		if werr != nil {
			s.draining = false
			s.sinkErr = werr
		}
		s.rmu.Unlock()
		s.consumed(n)
		if werr != nil {
			s.settleSink()
			return
		}
	}
}

// settleSink ends sinkTo when there is nothing left to write and the
// stream has ended (EOF, failure, Close) or the socket failed: it closes
// the socket's write side at a clean end and calls done, once.
func (s *Stream) settleSink() {
	s.rmu.Lock()
	if s.sinkDone == nil || s.draining {
		s.rmu.Unlock()
		return
	}
	var err error
	switch {
	case s.sinkErr != nil:
		err = s.sinkErr
	case s.closedLocal:
		err = net.ErrClosed
	case s.buf.n > 0:
		s.rmu.Unlock()
		return // a drain starts, or a delivery is on its way to start one
	case s.readErr != nil:
		err = s.readErr
	case !s.eof:
		s.rmu.Unlock()
		return
	}
	done, dst, n := s.sinkDone, s.sinkConn, s.sunk
	s.sinkDone, s.sink, s.sinkConn = nil, nil, nil
	s.rmu.Unlock()
	if err == nil {
		err = closeWrite(dst)
	}
	done(n, err)
}
