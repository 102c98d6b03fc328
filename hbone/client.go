package hbone

import (
	"context"
	"fmt"
	"net/http"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxStreamID is the last client stream ID; a connection that reaches it
// takes no new streams (after about a billion tunnels).
const maxStreamID = 1<<31 - 1

// connect opens a CONNECT stream on a slot taken with reserve and waits
// for the answer. A connection that dies before answering yields an error
// wrapping errRefused: the server did nothing the tunnel depends on (the
// client sends no byte before the 200), so the pool may retry.
func (c *conn) connect(ctx context.Context, r Request) (*Stream, error) {
	s, err := c.openStream(connectHeaders(r))
	if err != nil {
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w: %w", r.Authority, r.Addr, errRefused, err)
	}
	select {
	case <-s.resp:
	case <-ctx.Done():
		c.resetStream(s.id, http2.ErrCodeCancel, ctx.Err())
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", r.Authority, r.Addr, ctx.Err())
	}
	if err := s.respErr; err != nil {
		if c.closed() {
			err = fmt.Errorf("%w: %w", errRefused, err)
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", r.Authority, r.Addr, err)
	}
	if s.status != http.StatusOK {
		s.Close()
		return nil, fmt.Errorf("hbone: CONNECT %s via %s (%s): %d: %w", r.Authority, r.Addr, r.Peer, s.status, errorFor(s.status))
	}
	return s, nil
}

func connectHeaders(r Request) []hpack.HeaderField {
	tp := r.TraceParent
	if !tp.IsValid() {
		tp = NewTraceParent()
	}
	fields := []hpack.HeaderField{
		{Name: ":method", Value: http.MethodConnect},
		{Name: ":authority", Value: r.Authority.String()},
		{Name: "traceparent", Value: tp.String(), Sensitive: true}, // unique: keep it out of the HPACK table
	}
	if r.Forwarded.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: FormatForwarded(r.Forwarded)})
	}
	return fields
}

// openStream allocates the next stream ID and writes its HEADERS, under
// wmu so IDs reach the wire in order. The caller holds a reserved slot.
func (c *conn) openStream(fields []hpack.HeaderField) (*Stream, error) {
	c.lockWrite()
	defer c.unlockWrite()
	if err := c.writeQueuedControlLocked(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	id := c.nextID
	c.nextID += 2
	exhausted := c.nextID > maxStreamID
	if exhausted {
		c.goingAway = true
	}
	s := c.newStreamLocked(id)
	c.mu.Unlock()
	if exhausted && c.hooks.unusable != nil {
		go c.hooks.unusable(c)
	}
	if err := c.writeHeadersLocked(id, false, fields...); err != nil {
		c.endStream(id, err)
		return nil, err
	}
	return s, nil
}
