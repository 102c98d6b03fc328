package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// conn is one HTTP/2 connection over TLS, from either end. HBONE uses a
// small part of HTTP/2 (CONNECT streams, no request bodies other than the
// tunnel, no push, no priorities), and using it alone lets a stream close
// each direction separately, which x/net's http.Handler-based server
// cannot (a handler that returns resets the request side).
//
// Goroutines: readLoop owns the read side (framer, HPACK decoder) and
// dispatches every frame; any goroutine writes whole frames under wmu;
// controlLoop writes the control frames queued for it; keepalive sends
// PINGs when the connection has been quiet.
//
// Invariants:
//   - a frame is written whole under wmu, and the HEADERS that open streams
//     are written in stream-ID order (ID allocation happens under wmu);
//   - whoever releases wmu with no writer waiting flushes, so no frame
//     stays buffered once writers are gone;
//   - mu guards the stream map, the windows and the counters; wmu may be
//     taken before mu, never mu before wmu;
//   - active counts streams opened or reserved and not yet finished in
//     both directions; it never exceeds the limit in force when each
//     stream was reserved (our MaxConcurrentStreams as a server, the
//     pool's limit and the peer's SETTINGS as a client);
//   - readLoop never waits for wmu or for the network: the frames it
//     causes (WINDOW_UPDATE, RST_STREAM, SETTINGS and PING
//     acknowledgements) are queued for controlLoop. Otherwise two ends,
//     each blocked writing to the other because the other is not reading,
//     with their read loops waiting behind their writers, stall for good;
//   - a stream's slot is free on our side before the peer can learn the
//     stream ended, and control frames queued before a stream is opened
//     are written before its HEADERS (openStream writes the queue first):
//     a stream ends at the peer before the next one opens there, so the
//     server's count of open streams never runs behind the client's. Our
//     final frame (END_STREAM, a rejecting response, RST_STREAM) is
//     written after the stream is retired, under the same hold of wmu;
//     a reset caused by the read loop is retired first as a server and
//     queued first as a client;
//   - once done is closed, err is set and never changes; every wait in
//     this package also selects on done.
type conn struct {
	nc     net.Conn   // the TLS connection
	batch  *batchConn // below TLS: gathers a write's records into one send
	client bool
	cfg    ConnConfig
	hooks  connHooks
	// baseCtx (server side) is the parent of each stream's handler context.
	baseCtx context.Context

	// Read side, owned by readLoop.
	br   *bufio.Reader
	fr   *http2.Framer
	rbuf []byte // DATA payload scratch

	// Write side, under wmu.
	wmu      sync.Mutex
	wwaiting atomic.Int32 // writers waiting for wmu
	bw       *bufio.Writer
	wfr      *http2.Framer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	dataHdr  [9]byte
	werr     error

	mu             sync.Mutex
	streams        map[uint32]*Stream
	nextID         uint32 // client: next stream ID to open
	lastPeerID     uint32 // server: highest stream ID the peer opened
	active         int
	maxStreams     int // server: streams we accept; client: the pool's limit
	peerMaxStreams uint32
	peerMaxFrame   uint32
	peerInitWindow int64
	sendWindow     int64  // connection send window
	recvWindow     int64  // connection receive window left to the peer
	recvUnacked    int64  // bytes read by streams, not yet returned to the peer
	window         int64  // the connection window granted: ConnWindow, or less from a budget
	levels         levels // server: the window budgets window is taken from
	handlers       int    // server: handlers running, at most maxStreams
	waiting        []waitingHandler
	goingAway      bool // GOAWAY sent or received: no new streams
	idleTimer      *time.Timer
	pingTx         [8]byte       // payload of the PING in flight
	pingAck        chan struct{} // closed when it is answered

	// Control frames waiting for controlLoop, at most maxQueuedControl.
	ctrlMu   sync.Mutex
	ctrl     []func() error
	ctrlWake chan struct{}

	lastRead atomic.Int64 // UnixNano of the last frame read
	direct   atomic.Int64 // DATA bytes readLoop wrote straight to a stream's sink

	done      chan struct{}
	err       error
	closeOnce sync.Once
}

// connHooks let the owner (Server or Pool) follow a connection.
type connHooks struct {
	// serve handles a stream a client opened (server side only), on a
	// goroutine of its own: at most maxStreams run at once (see
	// startHandler).
	serve func(s *Stream, req requestHeaders)
	// unusable is called once, with no lock held, when the connection can
	// take no new stream (GOAWAY, closing, closed).
	unusable func(c *conn)
}

// requestHeaders are the fields of a CONNECT request this package reads.
type requestHeaders struct {
	method, authority, scheme, path, protocol string
	forwarded, traceparent                    string
	truncated                                 bool
}

const (
	initialWindow = 65535 // HTTP/2's default window before SETTINGS
	maxWindow     = 1<<31 - 1
	maxHeaderList = 16 << 10
	// maxQueuedControl bounds the control frames waiting to be written: a
	// peer that makes us queue more (PINGs, SETTINGS, resets) while it does
	// not read is cut off, as x/net's server does.
	maxQueuedControl = 10000
	recordSize       = 16 << 10 // one full TLS record of plaintext
	frameHeaderSize  = 9
)

var errIdle = errors.New("hbone: idle connection closed")

func newConn(nc net.Conn, batch *batchConn, client bool, cfg ConnConfig, hooks connHooks) *conn {
	c := &conn{
		nc:             nc,
		batch:          batch,
		client:         client,
		cfg:            cfg,
		hooks:          hooks,
		br:             bufio.NewReaderSize(nc, recordSize),
		bw:             bufio.NewWriterSize(nc, recordSize),
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		maxStreams:     DefaultMaxStreamsPerConn,
		peerMaxStreams: maxWindow,
		peerMaxFrame:   16 << 10,
		peerInitWindow: initialWindow,
		sendWindow:     initialWindow,
		recvWindow:     int64(cfg.ConnWindow),
		window:         int64(cfg.ConnWindow),
		done:           make(chan struct{}),
		ctrlWake:       make(chan struct{}, 1),
	}
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.fr.MaxHeaderListSize = maxHeaderList
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// budgetWindow takes the connection's receive window from the budgets of
// ls (server side, before handshake): ConnWindow, or what is left of it
// but at least HTTP/2's initial 64 KiB. It reports whether the window is
// whole; a short one grows back as the budgets free (takeConnCreditLocked).
// The server may close the connection meanwhile (Server.Close closes the
// connections it knows, this one included): then the window goes back at
// once, since close has released what the connection held.
func (c *conn) budgetWindow(ls levels) bool {
	got := ls.takeWindow(int64(c.cfg.ConnWindow))
	if got < initialWindow {
		ls.forceWindow(initialWindow - got)
		got = initialWindow
	}
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		ls.releaseWindow(got)
		return true // closed: nothing to count
	default:
	}
	c.levels, c.window, c.recvWindow = ls, got, got
	c.mu.Unlock()
	return got == int64(c.cfg.ConnWindow)
}

// handshake exchanges the preface and SETTINGS, then starts the
// connection's goroutines. The peer's first SETTINGS is applied before
// handshake returns, so a client knows the server's stream limit before
// opening anything.
func (c *conn) handshake() error {
	c.nc.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	if err := c.exchangeSettings(); err != nil {
		c.nc.Close()
		return fmt.Errorf("hbone: HTTP/2 handshake with %s: %w", c.nc.RemoteAddr(), err)
	}
	c.nc.SetDeadline(time.Time{})
	go c.readLoop()
	go c.controlLoop()
	if c.cfg.PingInterval > 0 {
		go c.keepalive()
	}
	c.mu.Lock()
	c.armIdleLocked()
	c.mu.Unlock()
	return nil
}

func (c *conn) exchangeSettings() error {
	if !c.client {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c.br, preface); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		if string(preface) != http2.ClientPreface {
			return errors.New("bad client preface: is the client speaking HTTP/2 over TLS?")
		}
	}
	if err := c.writeSettings(); err != nil {
		return err
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("read SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("first frame is %v, want SETTINGS", f.Header().Type)
	}
	if err := c.applySettings(sf); err != nil {
		return err
	}
	return c.writeFrames(func() error { return c.wfr.WriteSettingsAck() })
}

// writeSettings sends the preface (client), our SETTINGS and the
// connection window beyond the 64 KiB default.
func (c *conn) writeSettings() error {
	return c.writeFrames(func() error {
		if c.client {
			if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
				return err
			}
		}
		settings := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: uint32(c.cfg.StreamWindow)},
			{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
		}
		if c.client {
			settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		} else {
			settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.maxStreams)})
		}
		if err := c.wfr.WriteSettings(settings...); err != nil {
			return err
		}
		if extra := c.window - initialWindow; extra > 0 {
			return c.wfr.WriteWindowUpdate(0, uint32(extra))
		}
		return nil
	})
}

// writeFrames runs write under wmu. A write error is fatal to the
// connection: a frame may have gone out in part.
func (c *conn) writeFrames(write func() error) error {
	c.lockWrite()
	err := c.writeFramesLocked(write)
	return errors.Join(err, c.unlockWrite())
}

// lockWrite takes wmu, counting the writers waiting for it, and starts
// gathering TLS records into one send.
func (c *conn) lockWrite() {
	c.wwaiting.Add(1)
	c.wmu.Lock()
	c.wwaiting.Add(-1)
	c.batch.hold()
}

// unlockWrite flushes what is buffered, unless another writer is waiting
// for wmu: that one (or the last of a chain) will flush, so frames from
// concurrent streams share TLS records and system calls.
func (c *conn) unlockWrite() error {
	if c.wwaiting.Load() == 0 {
		var err error
		if c.werr == nil {
			err = c.bw.Flush()
		}
		if ferr := c.batch.flush(); err == nil {
			err = ferr
		}
		if err != nil && c.werr == nil {
			c.failWrite(err)
		}
	}
	err := c.werr
	c.wmu.Unlock()
	return err
}

func (c *conn) writeFramesLocked(write func() error) error {
	if c.werr != nil {
		return c.werr
	}
	if err := write(); err != nil {
		c.failWrite(err)
		return c.werr
	}
	return nil
}

// failWrite records a write error and closes the connection. Call with wmu held.
func (c *conn) failWrite(err error) {
	c.werr = fmt.Errorf("%w: write to %s: %w", ErrConnClosed, c.nc.RemoteAddr(), err)
	go c.close(c.werr)
}

// writeData writes one DATA frame. Its header is written by hand so the
// payload goes from the caller's buffer to TLS without an extra copy; a
// payload of recordSize*k-9 bytes fills exactly k TLS records.
func (c *conn) writeData(id uint32, p []byte, endStream bool) error {
	c.lockWrite()
	err := c.writeDataLocked(id, p, endStream)
	if uerr := c.unlockWrite(); err == nil {
		err = uerr
	}
	return err
}

// writeDataLocked is writeData with wmu held.
func (c *conn) writeDataLocked(id uint32, p []byte, endStream bool) error {
	return c.writeFramesLocked(func() error {
		h := c.dataHdr[:]
		h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
		h[3], h[4] = byte(http2.FrameData), 0
		if endStream {
			h[4] = byte(http2.FlagDataEndStream)
		}
		binary.BigEndian.PutUint32(h[5:], id)
		if _, err := c.bw.Write(h); err != nil {
			return err
		}
		_, err := c.bw.Write(p)
		return err
	})
}

// writeHeadersLocked encodes fields and writes them as HEADERS (and
// CONTINUATION frames if the peer's frame size requires). Call with wmu held.
func (c *conn) writeHeadersLocked(id uint32, endStream bool, fields ...hpack.HeaderField) error {
	return c.writeFramesLocked(func() error {
		c.hbuf.Reset()
		for _, f := range fields {
			if err := c.henc.WriteField(f); err != nil {
				return err
			}
		}
		block := c.hbuf.Bytes()
		c.mu.Lock()
		maxFrame := int(c.peerMaxFrame)
		c.mu.Unlock()
		first := block[:min(len(block), maxFrame)]
		block = block[len(first):]
		err := c.wfr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(block) == 0,
		})
		for err == nil && len(block) > 0 {
			frag := block[:min(len(block), maxFrame)]
			block = block[len(frag):]
			err = c.wfr.WriteContinuation(id, len(block) == 0, frag)
		}
		return err
	})
}

// queueControl has controlLoop write a control frame. It never blocks,
// so the read loop may call it.
func (c *conn) queueControl(write func() error) {
	c.ctrlMu.Lock()
	if len(c.ctrl) >= maxQueuedControl {
		c.ctrlMu.Unlock()
		go c.close(fmt.Errorf("%w: %s left %d control frames unread", ErrConnClosed, c.nc.RemoteAddr(), maxQueuedControl))
		return
	}
	c.ctrl = append(c.ctrl, write)
	c.ctrlMu.Unlock()
	signal(c.ctrlWake)
}

// controlLoop writes queued control frames, all that are waiting under one
// hold of wmu, until the connection closes.
func (c *conn) controlLoop() {
	for {
		select {
		case <-c.ctrlWake:
		case <-c.done:
			return
		}
		c.lockWrite()
		c.writeQueuedControlLocked() // an error: the connection is failing; close() ends this loop
		c.unlockWrite()
	}
}

// writeQueuedControlLocked writes the control frames queued so far. Call
// with wmu held.
func (c *conn) writeQueuedControlLocked() error {
	c.ctrlMu.Lock()
	queued := c.ctrl
	c.ctrl = nil
	c.ctrlMu.Unlock()
	for _, write := range queued {
		if err := c.writeFramesLocked(write); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) writeRST(id uint32, code http2.ErrCode) {
	c.queueControl(func() error { return c.wfr.WriteRSTStream(id, code) })
}

// writeWindowUpdates returns window to the peer, through controlLoop.
func (c *conn) writeWindowUpdates(connIncr, streamID uint32, streamIncr uint32) {
	c.queueControl(func() error {
		if connIncr > 0 {
			if err := c.wfr.WriteWindowUpdate(0, connIncr); err != nil {
				return err
			}
		}
		if streamIncr > 0 {
			return c.wfr.WriteWindowUpdate(streamID, streamIncr)
		}
		return nil
	})
}

// close tears the connection down once: streams fail with err, waiters
// wake, the owner hears about it.
func (c *conn) close(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		c.goingAway = true
		streams := make([]*Stream, 0, len(c.streams))
		for _, s := range c.streams {
			s.finished = true
			streams = append(streams, s)
		}
		clear(c.streams)
		c.active = 0
		c.waiting = nil
		window, levels := c.window, c.levels
		c.window = 0
		if c.idleTimer != nil {
			c.idleTimer.Stop()
		}
		close(c.done)
		c.mu.Unlock()
		c.nc.Close()
		levels.releaseWindow(window)
		if c.hooks.unusable != nil {
			c.hooks.unusable(c) // before the streams fail: their owners may redial at once
		}
		for _, s := range streams {
			s.fail(err)
		}
	})
}

// closed reports whether the connection is gone.
func (c *conn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// goAway tells the peer no new streams will be accepted, and closes the
// connection when its last stream finishes.
func (c *conn) goAway(code http2.ErrCode) {
	c.mu.Lock()
	wasGoingAway := c.goingAway
	c.goingAway = true
	last, idle := c.lastPeerID, c.active == 0
	c.mu.Unlock()
	if wasGoingAway {
		return
	}
	c.writeFrames(func() error { return c.wfr.WriteGoAway(last, code, nil) })
	if c.hooks.unusable != nil {
		c.hooks.unusable(c)
	}
	if idle {
		c.close(fmt.Errorf("%w: going away", ErrConnClosed))
	}
}

// armIdleLocked starts the idle timer when no stream is active. Call with mu held.
func (c *conn) armIdleLocked() {
	if c.active > 0 || c.cfg.IdleTimeout <= 0 || c.closed() {
		return
	}
	if c.idleTimer == nil {
		c.idleTimer = time.AfterFunc(c.cfg.IdleTimeout, c.idleExpired)
		return
	}
	c.idleTimer.Reset(c.cfg.IdleTimeout)
}

func (c *conn) idleExpired() {
	c.mu.Lock()
	idle := c.active == 0
	if idle {
		c.goingAway = true // no reservation may slip in now
	}
	c.mu.Unlock()
	if idle {
		c.writeFrames(func() error { return c.wfr.WriteGoAway(0, http2.ErrCodeNo, nil) })
		c.close(errIdle)
	}
}

// reserve takes a stream slot for a client stream about to open, if the
// connection is usable and under both limits.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := min(c.maxStreams, int(min(c.peerMaxStreams, maxWindow)))
	if c.goingAway || c.active >= limit {
		return false
	}
	c.active++
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	return true
}

// keepalive sends a PING whenever nothing has been read for PingInterval,
// and closes the connection if the PING is not answered in PingTimeout:
// a peer that vanished (host gone, network partition) is found within
// PingInterval+PingTimeout, and its connection leaves the pool.
func (c *conn) keepalive() {
	t := time.NewTimer(c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		quiet := time.Since(time.Unix(0, c.lastRead.Load()))
		if quiet < c.cfg.PingInterval {
			t.Reset(c.cfg.PingInterval - quiet)
			continue
		}
		if !c.ping() {
			return
		}
		t.Reset(c.cfg.PingInterval)
	}
}

// ping sends one PING and waits for its ACK; it reports whether the
// connection is still alive.
func (c *conn) ping() bool {
	var data [8]byte
	rand.Read(data[:])
	ack := make(chan struct{})
	c.mu.Lock()
	c.pingTx, c.pingAck = data, ack
	c.mu.Unlock()
	// The timer runs from before the write: a write stuck on a dead peer
	// counts against the timeout too.
	dead := time.AfterFunc(c.cfg.PingTimeout, func() {
		c.close(fmt.Errorf("%w: no PING answer from %s within %s: peer dead or unreachable",
			ErrConnClosed, c.nc.RemoteAddr(), c.cfg.PingTimeout))
	})
	defer dead.Stop()
	c.writeFrames(func() error { return c.wfr.WritePing(false, data) })
	select {
	case <-ack:
		return true
	case <-c.done:
		return false
	}
}
