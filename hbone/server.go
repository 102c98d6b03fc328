package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/internal/accept"
)

// ServerConfig configures a Server. SVID, Bundle and Handler are required.
type ServerConfig struct {
	// SVID is the server's own identity, presented in every handshake
	// (ztunnel: the destination workload's SVID; waypoint: its own).
	SVID x509svid.Source

	// Bundle holds the trust bundles that client SVIDs are verified
	// against. A client whose trust domain has no bundle here is refused
	// during the handshake, as is an expired or otherwise invalid SVID.
	Bundle x509bundle.Source

	// Authorizer, if set, further restricts which verified clients may
	// complete the handshake. By default any client whose SVID verifies is
	// accepted, and the Handler decides per tunnel.
	Authorizer tlsconfig.Authorizer

	// Handler answers every well-formed CONNECT request.
	Handler Handler

	// MaxConcurrentStreams is how many tunnels one client connection may
	// carry at once (SETTINGS_MAX_CONCURRENT_STREAMS). Default 100.
	MaxConcurrentStreams int

	// Conn tunes the HTTP/2 connections.
	Conn ConnConfig

	// Logger receives handshake failures and malformed requests, at debug
	// level: they are the client's errors. Default slog.Default().
	Logger *slog.Logger
}

// Server terminates HBONE: TLS 1.3 with mutual SPIFFE authentication,
// then HTTP/2 CONNECT streams handed to the Handler. Requests that are not
// CONNECT, or whose :authority or Forwarded header cannot be read, are
// answered 400 before the Handler sees them.
//
// Invariants: every accepted connection is in conns until it closes;
// after Shutdown or Close no new connection or stream is accepted.
type Server struct {
	cfg    ServerConfig
	tls    *tls.Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	stopping  bool
	drained   chan struct{} // closed when stopping and conns is empty
}

// NewServer checks cfg and prepares the TLS configuration once.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.SVID == nil:
		return nil, errors.New("hbone: ServerConfig.SVID is required")
	case cfg.Bundle == nil:
		return nil, errors.New("hbone: ServerConfig.Bundle is required")
	case cfg.Handler == nil:
		return nil, errors.New("hbone: ServerConfig.Handler is required")
	}
	if cfg.MaxConcurrentStreams <= 0 {
		cfg.MaxConcurrentStreams = DefaultMaxStreamsPerConn
	}
	cfg.Conn = cfg.Conn.withDefaults(0)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		tls:       serverTLS(cfg.SVID, cfg.Bundle, cfg.Authorizer),
		log:       cfg.Logger.With("component", "hbone-server"),
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		drained:   make(chan struct{}),
	}, nil
}

// Serve accepts connections on l until the server stops or l is closed;
// it returns net.ErrClosed after Shutdown or Close. A failed Accept (out
// of file descriptors, say) is logged and retried with a growing pause
// (accept.Backoff): the listener stays served.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l) {
		l.Close()
		return net.ErrClosed
	}
	defer s.untrack(l)
	var backoff accept.Backoff
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isStopping() {
				return net.ErrClosed
			}
			if !backoff.Retry(s.ctx, err) {
				return fmt.Errorf("hbone: accept on %s: %w", l.Addr(), err)
			}
			s.log.Warn("accept failed, retrying", "addr", l.Addr(), "error", err, "after", backoff.Delay())
			continue
		}
		backoff.Reset()
		go s.ServeConn(nc)
	}
}

// ServeConn serves one accepted TCP connection until it closes. It is
// for callers that accept connections themselves (ztunnel listens inside
// each workload's network namespace).
func (s *Server) ServeConn(nc net.Conn) {
	bc := newBatchConn(nc)
	tc := tls.Server(bc, s.tls)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Conn.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Debug("TLS handshake failed", "peer", nc.RemoteAddr(), "error", err)
		nc.Close()
		return
	}
	peer, err := peerID(tc.ConnectionState())
	if err != nil {
		s.log.Debug("peer without SPIFFE ID", "peer", nc.RemoteAddr(), "error", err)
		tc.Close()
		return
	}
	c := newConn(tc, bc, false, s.cfg.Conn, connHooks{})
	c.baseCtx = s.ctx
	c.maxStreams = s.cfg.MaxConcurrentStreams
	c.hooks = connHooks{
		stream:   func(st *Stream, req requestHeaders) { s.startTunnel(c, st, peer, req) },
		unusable: s.forget,
	}
	if !s.remember(c) {
		tc.Close()
		return
	}
	if err := c.handshake(); err != nil {
		s.log.Debug("HTTP/2 handshake failed", "peer", nc.RemoteAddr(), "error", err)
		c.close(err)
	}
}

// startTunnel runs the request on its own goroutine (called by readLoop).
func (s *Server) startTunnel(c *conn, st *Stream, peer spiffeid.ID, req requestHeaders) {
	go s.serveTunnel(st.ctx, st, peer, req)
}

// serveTunnel validates the request, then hands it to the Handler; a
// Handler that answers nothing gets a 503 sent for it.
func (s *Server) serveTunnel(ctx context.Context, st *Stream, peer spiffeid.ID, req requestHeaders) {
	t, err := newTunnel(st, peer, req)
	if err != nil {
		s.log.Debug("malformed CONNECT", "peer", peer, "addr", st.RemoteAddr(), "error", err)
		t.Reject(err)
		st.Close()
		return
	}
	s.cfg.Handler.ServeTunnel(ctx, t)
	if t.hijacked.Load() {
		return // the Handler's to close
	}
	t.Reject(fmt.Errorf("%w: the handler returned without answering", ErrUpstream))
	st.Close()
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

func (s *Server) remember(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// forget drops a connection that takes no new streams; closing
// connections stay tracked until they are closed.
func (s *Server) forget(c *conn) {
	go func() {
		<-c.done
		s.mu.Lock()
		delete(s.conns, c)
		if s.stopping && len(s.conns) == 0 {
			closeOnce(s.drained)
		}
		s.mu.Unlock()
	}()
}

func closeOnce(ch chan struct{}) {
	if !isClosed(ch) {
		close(ch)
	}
}

// Shutdown stops accepting, sends GOAWAY on every connection so clients
// open new tunnels elsewhere, and waits for open tunnels to finish or ctx
// to end; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.stop()
	for _, c := range conns {
		c.goAway(http2.ErrCodeNo)
	}
	select {
	case <-s.drained:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close stops accepting and closes every connection at once.
func (s *Server) Close() error {
	conns := s.stop()
	s.cancel()
	for _, c := range conns {
		c.close(fmt.Errorf("%w: server closed", ErrConnClosed))
	}
	return nil
}

// stop marks the server stopping, closes the listeners and returns the
// open connections.
func (s *Server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	if len(s.conns) == 0 {
		closeOnce(s.drained)
	}
	return conns
}
