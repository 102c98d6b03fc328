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

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// PoolConfig configures a Pool. Bundle is required.
type PoolConfig struct {
	// Bundle holds the trust bundles that servers' SVIDs are verified
	// against.
	Bundle x509bundle.Source

	// MaxStreamsPerConn caps the tunnels one connection carries; the
	// server's SETTINGS_MAX_CONCURRENT_STREAMS caps it further. Default 100.
	MaxStreamsPerConn int

	// DialContext opens the TCP connection to a server. ztunnel sets it to
	// mark its sockets (so its own traffic is not captured) or to dial from
	// a workload's network namespace. Default: a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// Conn tunes the HTTP/2 connections; Conn.IdleTimeout (default 5
	// minutes) releases a connection that has carried no tunnel that long,
	// and Conn.HandshakeTimeout bounds connect, TLS and SETTINGS together.
	Conn ConnConfig

	// Logger receives connection failures. Default slog.Default().
	Logger *slog.Logger
}

// Request names a tunnel to open.
type Request struct {
	// Source supplies the SVID the tunnel is opened with: the source
	// workload's, never the node's. Without one, Dial fails with
	// ErrNoSVID; there is no plaintext fallback.
	Source x509svid.Source

	// Peer is the identity the server must present (the destination
	// workload's, or its waypoint's); anything else fails the handshake.
	Peer spiffeid.ID

	// Addr is the server's HBONE address, usually the destination's IP and
	// port 15008.
	Addr netip.AddrPort

	// Authority is the CONNECT :authority: the destination ip:port.
	Authority netip.AddrPort

	// Forwarded, if valid, is sent as Forwarded: for="ip:port": the
	// original client's address.
	Forwarded netip.AddrPort

	// TraceParent is sent as traceparent; the zero value starts a new
	// trace for the tunnel.
	TraceParent TraceParent
}

// poolKey is what a connection is shared by: ztunnel's pool gives every
// (source identity, destination identity, destination address) its own
// connections, so a tunnel never rides on another workload's credentials.
type poolKey struct {
	src, dst spiffeid.ID
	addr     netip.AddrPort
}

// Pool opens tunnels over pooled HBONE connections.
//
// Invariants:
//   - connections are shared only within one poolKey; conns[k] holds the
//     usable connections of k, in the order they were opened;
//   - a connection carries at most min(MaxStreamsPerConn, the server's
//     SETTINGS_MAX_CONCURRENT_STREAMS) streams; Dial opens another
//     connection only when every usable one of its key is full;
//   - at most one connection per key is being dialed at a time
//     (dialing[k]); callers that need one wait for it rather than dial
//     their own, so a burst of Dials opens connections one by one;
//   - a connection leaves conns as soon as it can take no new stream
//     (GOAWAY, idle release, PING timeout, read or write error), so a
//     stream is never opened on a connection known to be dead; a stream
//     refused by a connection that died before answering is retried once
//     on a fresh connection.
type Pool struct {
	cfg PoolConfig
	log *slog.Logger

	mu      sync.Mutex
	conns   map[poolKey][]*conn
	dialing map[poolKey]*dialCall
	closed  bool
}

// dialCall is one connection being opened for a key.
type dialCall struct {
	done chan struct{}
	err  error
}

// PoolStats counts a Pool's connections and tunnels.
type PoolStats struct {
	Conns   int // usable connections
	Streams int // tunnels open or opening on them
}

// NewPool checks cfg and returns an empty pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("hbone: PoolConfig.Bundle is required")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if cfg.DialContext == nil {
		cfg.DialContext = (&net.Dialer{}).DialContext
	}
	cfg.Conn = cfg.Conn.withDefaults(DefaultIdleTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Pool{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "hbone-pool"),
		conns:   make(map[poolKey][]*conn),
		dialing: make(map[poolKey]*dialCall),
	}, nil
}

// Dial opens a tunnel: it picks (or opens) a connection for (source,
// peer, address), sends CONNECT and waits for the answer. A 400, 401 or
// 503 comes back as an error wrapping ErrBadRequest, ErrDenied or
// ErrUpstream.
func (p *Pool) Dial(ctx context.Context, r Request) (*Stream, error) {
	svid, err := sourceSVID(r.Source)
	if err != nil {
		return nil, err
	}
	if r.Peer.IsZero() {
		return nil, errors.New("hbone: Request.Peer is required: the server's identity must be verified")
	}
	if !r.Addr.IsValid() || !r.Authority.IsValid() {
		return nil, fmt.Errorf("hbone: Request.Addr %v and Request.Authority %v must be ip:port", r.Addr, r.Authority)
	}
	key := poolKey{src: svid.ID, dst: r.Peer, addr: r.Addr}
	for attempt := 0; ; attempt++ {
		c, err := p.reserve(ctx, key, svid)
		if err != nil {
			return nil, err
		}
		s, err := c.connect(ctx, r)
		if err == nil || attempt > 0 || !retryable(err) || ctx.Err() != nil {
			return s, err
		}
		p.log.Debug("retrying tunnel on a new connection", "addr", r.Addr, "error", err)
	}
}

// retryable reports whether a CONNECT failed without the server having
// acted on it.
func retryable(err error) bool {
	return errors.Is(err, errRefused)
}

// reserve returns a connection of key with a stream slot taken for the
// caller.
func (p *Pool) reserve(ctx context.Context, key poolKey, svid *x509svid.SVID) (*conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		for _, c := range p.conns[key] {
			if c.reserve() {
				p.mu.Unlock()
				return c, nil
			}
		}
		d := p.dialing[key]
		if d == nil {
			d = &dialCall{done: make(chan struct{})}
			p.dialing[key] = d
			go p.dial(key, svid, d)
		}
		p.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, d.err
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("hbone: connect to %s: %w", key.addr, ctx.Err())
		}
	}
}

// dial opens one connection for key and adds it to the pool. It runs on
// its own goroutine, bounded by HandshakeTimeout rather than by any one
// caller's context, since every waiting caller shares it.
func (p *Pool) dial(key poolKey, svid *x509svid.SVID, d *dialCall) {
	c, err := p.open(key, svid)
	p.mu.Lock()
	delete(p.dialing, key)
	if err == nil && p.closed {
		err = ErrPoolClosed
	}
	if err == nil {
		p.conns[key] = append(p.conns[key], c)
	}
	d.err = err
	close(d.done)
	p.mu.Unlock()
	if err != nil {
		if c != nil {
			c.close(err)
		}
		p.log.Debug("connection failed", "addr", key.addr, "peer", key.dst, "error", err)
	}
}

// open dials TCP, runs the TLS handshake presenting the source's SVID and
// verifying the server is key.dst, and exchanges HTTP/2 SETTINGS.
func (p *Pool) open(key poolKey, svid *x509svid.SVID) (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Conn.HandshakeTimeout)
	defer cancel()
	nc, err := p.cfg.DialContext(ctx, "tcp", key.addr.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.addr, err)
	}
	bc := newBatchConn(nc)
	tc := tls.Client(bc, clientTLS(svid, p.cfg.Bundle, key.dst))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s (want %s): %w", key.addr, key.dst, err)
	}
	c := newConn(tc, bc, true, p.cfg.Conn, connHooks{unusable: p.evict})
	c.maxStreams = p.cfg.MaxStreamsPerConn
	if err := c.handshake(); err != nil {
		return nil, err
	}
	return c, nil
}

// evict removes a connection that can take no new stream.
func (p *Pool) evict(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, conns := range p.conns {
		for i, pc := range conns {
			if pc == c {
				p.conns[key] = append(conns[:i:i], conns[i+1:]...)
				if len(p.conns[key]) == 0 {
					delete(p.conns, key)
				}
				return
			}
		}
	}
}

// Stats counts the pool's usable connections and their tunnels.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st PoolStats
	for _, conns := range p.conns {
		for _, c := range conns {
			st.Conns++
			c.mu.Lock()
			st.Streams += c.active
			c.mu.Unlock()
		}
	}
	return st
}

// Close closes every connection, failing their tunnels, and makes later
// Dials fail with ErrPoolClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var all []*conn
	for _, conns := range p.conns {
		all = append(all, conns...)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.close(fmt.Errorf("%w: pool closed", ErrConnClosed))
	}
	return nil
}
