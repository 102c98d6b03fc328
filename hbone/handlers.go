package hbone

import "golang.org/x/net/http2"

// A reset frees a stream's slot at once (see conn's invariants), but not
// the handler serving it, which may still be authorizing or dialing: a
// client that opens and resets streams in a loop (HTTP/2 rapid reset,
// CVE-2023-44487) would start handlers without bound while never holding
// more than maxStreams streams. So handlers are counted apart from
// streams, as x/net's server does since that CVE: at most maxStreams run
// per connection, a stream that arrives while they all run waits for one
// to end, and a client that keeps more than maxWaitingHandlers times
// maxStreams streams waiting (most of them reset, since no more than
// maxStreams can be open) resets faster than its handlers end, and gets
// GOAWAY ENHANCE_YOUR_CALM.
const maxWaitingHandlers = 4

// waitingHandler is a stream whose handler has not started yet.
type waitingHandler struct {
	s   *Stream
	req requestHeaders
}

// startHandler serves s on a goroutine of its own, or queues it while
// maxStreams handlers run (readLoop only). The error ends the connection.
func (c *conn) startHandler(s *Stream, req requestHeaders) error {
	c.mu.Lock()
	if c.handlers < c.maxStreams {
		c.handlers++
		c.mu.Unlock()
		go c.runHandlers(s, req)
		return nil
	}
	if len(c.waiting) >= maxWaitingHandlers*c.maxStreams {
		c.mu.Unlock()
		c.refused(RefusedRapidReset)
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	c.waiting = append(c.waiting, waitingHandler{s, req})
	c.mu.Unlock()
	return nil
}

// runHandlers serves s, then the waiting streams that are still open, one
// after the other, until none waits.
func (c *conn) runHandlers(s *Stream, req requestHeaders) {
	for s != nil {
		c.hooks.serve(s, req)
		c.mu.Lock()
		s, req = c.nextWaitingLocked()
		if s == nil {
			c.handlers--
		}
		c.mu.Unlock()
	}
}

// nextWaitingLocked pops the first waiting stream that was not reset
// meanwhile. Call with mu held.
func (c *conn) nextWaitingLocked() (*Stream, requestHeaders) {
	for len(c.waiting) > 0 {
		w := c.waiting[0]
		c.waiting[0] = waitingHandler{}
		c.waiting = c.waiting[1:]
		if !w.s.finished {
			return w.s, w.req
		}
	}
	c.waiting = nil
	return nil, requestHeaders{}
}

// refused reports a refusal to the owner's OnRefuse.
func (c *conn) refused(r Refusal) {
	if c.cfg.OnRefuse != nil {
		c.cfg.OnRefuse(r)
	}
}
