package hbone

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/net/http2"
)

// readLoop reads and dispatches frames until the connection fails. DATA
// payloads are read straight from the connection into conn.rbuf, then
// copied into the stream's buffer; every other frame goes through the
// framer.
func (c *conn) readLoop() {
	err := c.readFrames()
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.writeFrames(func() error { return c.wfr.WriteGoAway(c.lastPeerIDLocked(), http2.ErrCode(ce), nil) })
	}
	c.close(fmt.Errorf("%w: %w", ErrConnClosed, err))
}

func (c *conn) lastPeerIDLocked() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastPeerID
}

func (c *conn) readFrames() error {
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			return readError(err, c)
		}
		c.lastRead.Store(time.Now().UnixNano())
		if fh.Type == http2.FrameData {
			err = c.readData(fh)
		} else {
			err = c.readControl(fh)
		}
		if err != nil {
			return err
		}
	}
}

func readError(err error, c *conn) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("peer %s closed the connection", c.nc.RemoteAddr())
	}
	if errors.Is(err, http2.ErrFrameTooLarge) {
		return http2.ConnectionError(http2.ErrCodeFrameSize)
	}
	return err
}

func (c *conn) readControl(fh http2.FrameHeader) error {
	f, err := c.fr.ReadFrameForHeader(fh)
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			if !c.client && fh.Type == http2.FrameHeaders {
				c.mu.Lock()
				c.lastPeerID = max(c.lastPeerID, se.StreamID)
				c.mu.Unlock()
			}
			c.resetStream(se.StreamID, se.Code, fmt.Errorf("%w: %w", ErrStreamReset, se))
			return nil
		}
		return readError(err, c)
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := c.applySettings(f); err != nil {
			return err
		}
		c.queueControl(func() error { return c.wfr.WriteSettingsAck() })
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 && c.isIdleStream(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 5.1
		}
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		return c.onPing(f)
	case *http2.RSTStreamFrame:
		if c.isIdleStream(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 6.4
		}
		c.peerReset(f.StreamID, resetError(f.ErrCode))
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol, fmt.Errorf("%w: stream depends on itself", ErrStreamReset))
		}
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // we disabled push
	}
	return nil // other PRIORITY and unknown frames are ignored, as RFC 9113 asks
}

// readData reads a DATA frame's payload into the stream's buffer,
// enforcing both receive windows. Flow control counts the whole payload,
// padding included; padding and data for streams already gone are
// credited back at once.
func (c *conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	n := int(fh.Length)
	if cap(c.rbuf) < n {
		// Never grow the scratch past what the peer may send: a frame
		// over the window is refused before its payload takes memory.
		if int64(n) > c.recvWindowNow() {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.rbuf = make([]byte, n)
	}
	payload := c.rbuf[:n]
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return err
	}
	data, err := unpad(fh, payload)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if int64(n) > c.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= int64(n)
	s := c.streams[fh.StreamID]
	if s == nil || s.recvEnd {
		c.mu.Unlock()
		c.creditConn(n)
		if s == nil && c.isIdleStream(fh.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if s != nil {
			c.resetStream(fh.StreamID, http2.ErrCodeStreamClosed, fmt.Errorf("%w: DATA after END_STREAM", ErrStreamReset))
		}
		return nil
	}
	if int64(n) > s.recvWindow {
		c.mu.Unlock()
		c.creditConn(n)
		c.resetStream(fh.StreamID, http2.ErrCodeFlowControl, fmt.Errorf("%w: peer overran the stream window", ErrStreamReset))
		return nil
	}
	s.recvWindow -= int64(n)
	end := fh.Flags.Has(http2.FlagDataEndStream)
	if end {
		s.recvEnd = true
	}
	c.mu.Unlock()

	s.deliver(data, end)
	if pad := n - len(data); pad > 0 {
		c.creditConn(pad)
	}
	if end {
		c.mu.Lock()
		c.finishLocked(s)
		c.mu.Unlock()
	}
	return nil
}

// unpad strips DATA padding (RFC 9113 6.1).
func unpad(fh http2.FrameHeader, payload []byte) ([]byte, error) {
	if !fh.Flags.Has(http2.FlagDataPadded) {
		return payload, nil
	}
	if len(payload) == 0 || int(payload[0]) >= len(payload) {
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return payload[1 : len(payload)-int(payload[0])], nil
}

// isIdleStream reports whether id names a stream that was never opened.
func (c *conn) isIdleStream(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client {
		return id%2 == 0 || id >= c.nextID
	}
	return id > c.lastPeerID
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	if c.client {
		return c.onResponse(f)
	}
	return c.onRequest(f)
}

// onRequest opens a stream for a client's HEADERS (server side).
func (c *conn) onRequest(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if s := c.streams[id]; s != nil { // trailers: nothing we read, but they may end the stream
		c.mu.Unlock()
		if f.StreamEnded() {
			c.endRemote(s)
		}
		return nil
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.lastPeerID = id
	if f.HasPriority() && f.Priority.StreamDep == id { // RFC 9113 5.3.1
		c.mu.Unlock()
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	if c.goingAway || c.active >= c.maxStreams {
		c.mu.Unlock()
		c.writeRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	s := c.newStreamLocked(id)
	s.recvEnd = f.StreamEnded()
	c.mu.Unlock()
	if s.recvEnd {
		s.deliver(nil, true)
	}
	return c.startHandler(s, readRequest(f))
}

func (c *conn) recvWindowNow() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recvWindow
}

func readRequest(f *http2.MetaHeadersFrame) requestHeaders {
	r := requestHeaders{
		method:    f.PseudoValue("method"),
		authority: f.PseudoValue("authority"),
		scheme:    f.PseudoValue("scheme"),
		path:      f.PseudoValue("path"),
		protocol:  f.PseudoValue("protocol"),
		truncated: f.Truncated,
	}
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "forwarded":
			r.forwarded = joinField(r.forwarded, hf.Value)
		case "traceparent":
			r.traceparent = hf.Value
		}
	}
	return r
}

// joinField combines repeated header fields into one list, as HTTP does.
func joinField(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

// onResponse delivers the status of a stream we opened (client side).
func (c *conn) onResponse(f *http2.MetaHeadersFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		if f.StreamID%2 == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream we already reset
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	switch {
	case err != nil || f.Truncated:
		c.resetStream(s.id, http2.ErrCodeProtocol, fmt.Errorf("%w: malformed response headers", ErrStreamReset))
		return nil
	case status >= 100 && status < 200:
		return nil // informational; the final response follows
	}
	s.respond(status)
	if f.StreamEnded() {
		c.endRemote(s)
	}
	return nil
}

// endRemote records the peer's END_STREAM.
func (c *conn) endRemote(s *Stream) {
	c.mu.Lock()
	s.recvEnd = true
	c.finishLocked(s)
	c.mu.Unlock()
	s.deliver(nil, true)
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if c.sendWindow+int64(f.Increment) > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWindow += int64(f.Increment)
		for _, s := range c.streams {
			s.wakeWriter()
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
	}
	if s.sendWindow+int64(f.Increment) > maxWindow {
		go c.resetStream(s.id, http2.ErrCodeFlowControl, fmt.Errorf("%w: window overflow", ErrStreamReset)) // c.mu is held
		return nil
	}
	s.sendWindow += int64(f.Increment)
	s.wakeWriter()
	return nil
}

func (c *conn) applySettings(f *http2.SettingsFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerInitWindow
			c.peerInitWindow = int64(st.Val)
			for _, s := range c.streams {
				s.sendWindow += delta
				s.wakeWriter()
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		}
		return nil
	})
}

func (c *conn) onPing(f *http2.PingFrame) error {
	if f.StreamID != 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if !f.IsAck() {
		data := f.Data
		c.queueControl(func() error { return c.wfr.WritePing(true, data) })
		return nil
	}
	c.mu.Lock()
	if c.pingAck != nil && f.Data == c.pingTx {
		close(c.pingAck)
		c.pingAck = nil
	}
	c.mu.Unlock()
	return nil
}

// onGoAway stops new streams; streams the peer never saw fail so the pool
// can retry them on another connection.
func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goingAway = true
	var unseen []*Stream
	for id, s := range c.streams {
		if id > f.LastStreamID {
			unseen = append(unseen, s)
		}
	}
	idle := c.active == 0
	c.mu.Unlock()
	for _, s := range unseen {
		c.endStream(s.id, fmt.Errorf("%w: GOAWAY before the stream was processed", errRefused))
	}
	if c.hooks.unusable != nil {
		c.hooks.unusable(c)
	}
	if idle {
		c.close(fmt.Errorf("%w: peer sent GOAWAY", ErrConnClosed))
	}
}
