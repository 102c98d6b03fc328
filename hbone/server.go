package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

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
// Invariants: every accepted connection is in conns until it closes, and
// counted in the limits of levels (its own, then cfg.Conn.Node's) while it
// is; after Shutdown or Close no new connection or stream is accepted.
type Server struct {
	cfg    ServerConfig
	tls    *tls.Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	levels levels
	// peerOf reads the client's identity once TLS is done; tests that let
	// clients without certificates in (h2spec) replace it.
	peerOf func(tls.ConnectionState) (spiffeid.ID, error)

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]spiffeid.ID
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
	cfg.Conn = cfg.Conn.withDefaults(DefaultServerIdleTimeout)
	cfg.Conn.Limits = cfg.Conn.Limits.withDefaults(DefaultLimits)
	lv := levels{newLimiter(cfg.Conn.Limits)}
	if cfg.Conn.Node != nil {
		lv = append(lv, cfg.Conn.Node.l)
	}
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
		levels:    lv,
		peerOf:    peerID,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]spiffeid.ID),
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
// each workload's network namespace). The connection holds a handshake
// slot until its TLS and HTTP/2 handshakes are done, then counts as its
// client's connection (see Limits).
func (s *Server) ServeConn(nc net.Conn) {
	h, ok := s.admitHandshake(nc)
	if !ok {
		s.refused(RefusedHandshakesPerIP)
		s.log.Debug("too many handshakes in progress from one address: connection closed", "peer", nc.RemoteAddr())
		nc.Close()
		return
	}
	err := s.handshake(nc)
	s.endHandshake(h)
	if err != nil {
		s.log.Debug("handshake failed", "peer", nc.RemoteAddr(), "error", err)
	}
}

// handshake runs TLS, admits the client's identity, then exchanges HTTP/2
// SETTINGS; the connection then serves its streams on its own goroutines.
func (s *Server) handshake(nc net.Conn) error {
	bc := newBatchConn(nc)
	tc := tls.Server(bc, s.tls)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Conn.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		nc.Close()
		return fmt.Errorf("hbone: TLS handshake: %w", err)
	}
	peer, err := s.peerOf(tc.ConnectionState())
	if err != nil {
		tc.Close()
		return fmt.Errorf("hbone: peer without SPIFFE ID: %w", err)
	}
	c := newConn(tc, bc, false, s.cfg.Conn, connHooks{})
	c.baseCtx = s.ctx
	c.maxStreams = s.cfg.MaxConcurrentStreams
	c.hooks = connHooks{
		serve:    func(st *Stream, req requestHeaders) { s.serveTunnel(st.ctx, st, peer, req) },
		unusable: s.forget,
	}
	if refusal, ok := s.remember(c, peer); !ok {
		if refusal == "" {
			tc.Close()
			return fmt.Errorf("%w: server stopping", ErrConnClosed)
		}
		return s.refuseConn(c, peer, refusal)
	}
	if !c.budgetWindow(s.levels) {
		s.refused(RefusedWindow)
	}
	if err := c.handshake(); err != nil {
		c.close(err)
		return err
	}
	return nil
}

// refuseConn answers a connection over a limit with SETTINGS and GOAWAY
// ENHANCE_YOUR_CALM, saying why, and closes it.
func (s *Server) refuseConn(c *conn, peer spiffeid.ID, r Refusal) error {
	s.refused(r)
	err := fmt.Errorf("hbone: %s has too many connections (%s): refused", peer, r)
	c.nc.SetDeadline(time.Now().Add(s.cfg.Conn.HandshakeTimeout))
	c.writeSettings()
	c.writeFrames(func() error { return c.wfr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte(err.Error())) })
	c.nc.Close()
	return err
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

// admitHandshake takes a handshake slot at every level, dropping the
// oldest handshake of a level that is full (see Limits).
func (s *Server) admitHandshake(nc net.Conn) (*handshake, bool) {
	h := &handshake{nc: nc}
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		h.ip = ap.Addr().Unmap()
	}
	for i, l := range s.levels {
		victim, ok := l.admitHandshake(h, i)
		if !ok {
			s.endHandshake(h)
			return nil, false
		}
		if victim != nil {
			s.endHandshake(victim)
			victim.nc.Close()
			s.refused(RefusedHandshakes)
		}
	}
	return h, true
}

func (s *Server) endHandshake(h *handshake) {
	for i, l := range s.levels {
		l.endHandshake(h, i)
	}
}

func (s *Server) refused(r Refusal) {
	if s.cfg.Conn.OnRefuse != nil {
		s.cfg.Conn.OnRefuse(r)
	}
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

// remember tracks a connection and counts it at every level, unless the
// server is stopping or a limit refuses it.
func (s *Server) remember(c *conn, peer spiffeid.ID) (Refusal, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return "", false
	}
	for i, l := range s.levels {
		if r, ok := l.admitConn(peer); !ok {
			for _, prev := range s.levels[:i] {
				prev.endConn(peer)
			}
			return r, false
		}
	}
	s.conns[c] = peer
	return "", true
}

// forget drops a connection that takes no new streams; closing
// connections stay tracked until they are closed.
func (s *Server) forget(c *conn) {
	go func() {
		<-c.done
		s.mu.Lock()
		if peer, ok := s.conns[c]; ok {
			delete(s.conns, c)
			for _, l := range s.levels {
				l.endConn(peer)
			}
		}
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
