package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler answers the tunnels a Server receives. ServeTunnel runs on its
// own goroutine per tunnel and must answer exactly once, with t.Accept
// (200, then the tunnel carries bytes) or t.Reject (401, 503, ...), in
// named phases as ztunnel's inbound does:
//
//	func (in *Inbound) ServeTunnel(ctx context.Context, t *hbone.Tunnel) {
//		if err := in.authorize(ctx, t); err != nil { // wraps hbone.ErrDenied
//			t.Reject(err)
//			return
//		}
//		up, err := in.dial(ctx, t.Authority)
//		if err != nil {
//			t.Reject(fmt.Errorf("%w: %w", hbone.ErrUpstream, err))
//			return
//		}
//		s, err := t.Accept()
//		if err != nil { up.Close(); return }
//		counts, err := hbone.Relay(ctx, s, up)
//		...
//	}
//
// A Handler that returns without answering has the tunnel rejected with
// 503. ctx ends when the client resets the stream, the connection dies,
// or the server closes; the Stream is closed when ServeTunnel returns,
// unless the Handler took it with t.Hijack (then closing it is the
// Handler's, as StartRelay does).
type Handler interface {
	ServeTunnel(ctx context.Context, t *Tunnel)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, t *Tunnel)

// ServeTunnel calls f(ctx, t).
func (f HandlerFunc) ServeTunnel(ctx context.Context, t *Tunnel) { f(ctx, t) }

// Tunnel is a CONNECT request the Server has authenticated and validated,
// waiting for the Handler's answer.
type Tunnel struct {
	// Peer is the client's SPIFFE ID, verified against the trust bundle
	// during the TLS handshake (ztunnel: the source workload's identity).
	Peer spiffeid.ID

	// RemoteAddr is the TCP peer address of the carrying connection.
	RemoteAddr net.Addr

	// Authority is the validated :authority: the destination the client
	// asks for. Whether the server may reach it is the Handler's call.
	Authority netip.AddrPort

	// Forwarded is the original client named by the Forwarded header
	// ("for"), or the zero AddrPort when there was none. Port 0: no port.
	Forwarded netip.AddrPort

	// TraceParent is the request's W3C trace context; the zero value when
	// it was absent or invalid.
	TraceParent TraceParent

	stream   *Stream
	once     sync.Once
	hijacked atomic.Bool
}

var errAnswered = errors.New("hbone: tunnel already answered")

// newTunnel validates a request. On error the returned Tunnel can still
// Reject it.
func newTunnel(st *Stream, peer spiffeid.ID, req requestHeaders) (*Tunnel, error) {
	t := &Tunnel{Peer: peer, RemoteAddr: st.RemoteAddr(), stream: st}
	if err := checkConnect(req); err != nil {
		return t, err
	}
	var err error
	if t.Authority, err = ParseAuthority(req.authority); err != nil {
		return t, err
	}
	if t.Forwarded, err = ParseForwarded(req.forwarded); err != nil {
		return t, err
	}
	t.TraceParent, _ = ParseTraceParent(req.traceparent) // invalid: ignored, per W3C
	return t, nil
}

// checkConnect accepts a plain CONNECT (RFC 9113 8.5): no :scheme, :path
// or :protocol.
func checkConnect(req requestHeaders) error {
	switch {
	case req.truncated:
		return fmt.Errorf("%w: header list too large", ErrBadRequest)
	case req.method != http.MethodConnect:
		return fmt.Errorf("%w: method %q, want CONNECT", ErrBadRequest, req.method)
	case req.scheme != "" || req.path != "" || req.protocol != "":
		return fmt.Errorf("%w: CONNECT with :scheme, :path or :protocol", ErrBadRequest)
	}
	return nil
}

// Accept answers 200 and returns the tunnel's byte stream. It fails if the
// tunnel was already answered or the client has gone.
func (t *Tunnel) Accept() (*Stream, error) {
	if err := t.answer(http.StatusOK); err != nil {
		return nil, err
	}
	return t.stream, nil
}

// Hijack is Accept for a Handler that returns before the tunnel ends:
// the Server then leaves the Stream open, and its context live, until the
// Stream is closed or reset. The caller must close it.
func (t *Tunnel) Hijack() (*Stream, error) {
	s, err := t.Accept()
	if err == nil {
		t.hijacked.Store(true)
	}
	return s, err
}

// Reject answers with StatusFor(err) (Reject(nil) answers 503) and ends
// the stream. Only the status reaches the client; err is for the caller's
// logs. It does nothing if the tunnel was already answered.
func (t *Tunnel) Reject(err error) error {
	status := StatusFor(err)
	if status == http.StatusOK {
		status = http.StatusServiceUnavailable
	}
	return t.answer(status)
}

func (t *Tunnel) answer(status int) error {
	err := errAnswered
	t.once.Do(func() {
		err = t.stream.respond200OrEnd(status)
	})
	return err
}

// respond200OrEnd writes the response HEADERS; any status other than 200
// ends the stream both ways (END_STREAM, then RST_STREAM NO_ERROR so the
// client need not finish its side, as RFC 9113 8.1 allows).
func (s *Stream) respond200OrEnd(status int) error {
	c := s.c
	end := status != http.StatusOK
	c.lockWrite()
	c.mu.Lock()
	err := s.sendErrLocked()
	if end && err == nil {
		// Retire the stream before the client can learn it ended (see
		// conn's invariants); it fails below, once wmu is released.
		c.retireLocked(s)
	}
	c.mu.Unlock()
	if err == nil {
		err = c.writeHeadersLocked(s.id, end, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	}
	if end && err == nil {
		err = c.writeFramesLocked(func() error { return c.wfr.WriteRSTStream(s.id, http2.ErrCodeNo) })
	}
	if uerr := c.unlockWrite(); err == nil {
		err = uerr
	}
	if end {
		s.fail(fmt.Errorf("%w: tunnel rejected with %d", ErrConnClosed, status))
		s.discard()
	}
	if err != nil {
		return fmt.Errorf("hbone: answer %d to %s: %w", status, s.RemoteAddr(), err)
	}
	return nil
}
