package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// HBONEPort is where waypoints and ztunnels terminate tunnels; the
// waypoint tunnels to an endpoint's ztunnel at <endpoint IP>:HBONEPort.
const HBONEPort = 15008

// Defaults of Config.
const (
	DefaultSniffTimeout = time.Second
	DefaultDialTimeout  = 10 * time.Second
	DefaultIdleTimeout  = 5 * time.Minute
	// DefaultMaxHeaderBytes bounds an HTTP/1.1 request's header section,
	// as Envoy's 60 KiB default does.
	DefaultMaxHeaderBytes = 60 << 10
)

// Config configures a Waypoint. SVID, Bundle and Policy are required.
type Config struct {
	// SVID is the waypoint's own identity, from the SPIRE agent's Workload
	// API: presented to the ztunnels that tunnel to it, and to the
	// endpoints' ztunnels it tunnels to (they see the waypoint as the
	// source, as in Istio).
	SVID x509svid.Source
	// Bundle holds the trust bundles peers are verified against.
	Bundle x509bundle.Source
	// Policy decides every request (layer l7) and every relayed TCP
	// connection (layer l4). An error denies.
	Policy policy.Authorizer
	// Pool opens the upstream tunnels. Default: a pool on Bundle, with
	// hbone's defaults.
	Pool *hbone.Pool
	// Conn tunes the HBONE server's connections (windows, limits, idle).
	Conn hbone.ConnConfig
	// Metrics and AccessLog report requests; nil disables them.
	Metrics   *Metrics
	AccessLog *AccessLog
	// Logger is the component logger; default slog.Default().
	Logger *slog.Logger
	// SniffTimeout is how long a tunnel to a port that declares no protocol
	// may stay silent before it is relayed as TCP (server-first protocols).
	// Default 1s.
	SniffTimeout time.Duration
	// DialTimeout bounds opening an upstream tunnel. Default 10s.
	DialTimeout time.Duration
	// IdleTimeout closes a client's HTTP keep-alive connection idle this
	// long. Default 5 minutes.
	IdleTimeout time.Duration
	// EjectAfter consecutive failures of a service's endpoint (a 5xx, or
	// no tunnel to it) take it out of the balancer's choices for
	// BaseEjection, longer each time. Defaults DefaultEjectAfter and
	// DefaultBaseEjection.
	EjectAfter   int
	BaseEjection time.Duration
	// RetryBudgetPercent of a destination's requests in flight may be
	// retries in flight, and always RetryMinConcurrency of them, as in
	// Envoy's retry budget; a retry beyond is not made. Defaults
	// DefaultRetryBudgetPercent and DefaultRetryMinConcurrency.
	RetryBudgetPercent  float64
	RetryMinConcurrency int
	// RetryBufferBytes of a request body are kept so that it can be
	// retried; a longer body is sent once. Default DefaultRetryBufferBytes.
	RetryBufferBytes int
}

// Waypoint terminates HBONE, decides requests and forwards them.
//
// Invariants: every request is decided by cfg.Policy before any byte of
// it goes upstream; the source of every decision is the tunnel's verified
// peer; an upstream tunnel is opened for one client tunnel only (its
// Forwarded names that client), and never to the waypoint itself.
type Waypoint struct {
	cfg      Config
	id       spiffeid.ID
	log      *slog.Logger
	state    atomic.Pointer[state.Snapshot]
	authn    atomic.Pointer[Authn]  // nil: no RequestAuthentication in force
	routes   atomic.Pointer[Routes] // nil: no HTTPRoute or VirtualService in force
	server   *hbone.Server
	h1       *http.Server
	h1in     *connListener
	h2       *http2.Server
	proxy    *httputil.ReverseProxy
	lb       *balancer
	budget   *retryBudget
	wg       sync.WaitGroup
	ownsPool bool
}

// New checks cfg and prepares the servers.
func New(cfg Config) (*Waypoint, error) {
	if cfg.SVID == nil || cfg.Bundle == nil || cfg.Policy == nil {
		return nil, errors.New("waypoint: Config.SVID, Bundle and Policy are required")
	}
	svid, err := cfg.SVID.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("waypoint: own SVID: %w (is the SPIRE agent's Workload API reachable and this waypoint registered?)", err)
	}
	cfg = withDefaults(cfg)
	w := &Waypoint{cfg: cfg, id: svid.ID, log: cfg.Logger.With("component", "waypoint"), lb: newBalancer(cfg.EjectAfter, cfg.BaseEjection),
		budget: newRetryBudget(cfg.RetryBudgetPercent, cfg.RetryMinConcurrency)}
	if w.cfg.Pool == nil {
		if w.cfg.Pool, err = hbone.NewPool(hbone.PoolConfig{Bundle: cfg.Bundle, Logger: w.log}); err != nil {
			return nil, err
		}
		w.ownsPool = true
	}
	w.server, err = hbone.NewServer(hbone.ServerConfig{SVID: cfg.SVID, Bundle: cfg.Bundle, Handler: w, Conn: cfg.Conn, Logger: w.log})
	if err != nil {
		return nil, err
	}
	w.initHTTP()
	return w, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SniffTimeout <= 0 {
		cfg.SniffTimeout = DefaultSniffTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.EjectAfter <= 0 {
		cfg.EjectAfter = DefaultEjectAfter
	}
	if cfg.BaseEjection <= 0 {
		cfg.BaseEjection = DefaultBaseEjection
	}
	if cfg.RetryBudgetPercent <= 0 {
		cfg.RetryBudgetPercent = DefaultRetryBudgetPercent
	}
	if cfg.RetryMinConcurrency <= 0 {
		cfg.RetryMinConcurrency = DefaultRetryMinConcurrency
	}
	if cfg.RetryBufferBytes <= 0 {
		cfg.RetryBufferBytes = DefaultRetryBufferBytes
	}
	return cfg
}

// initHTTP builds the one net/http server every HTTP/1.1 tunnel is handed
// to, and the x/net/http2 server that serves h2c tunnels, tied together so
// that shutting the first down sends GOAWAY on the second's connections.
func (w *Waypoint) initHTTP() {
	w.h1in = newConnListener()
	w.h1 = &http.Server{
		Handler:           w,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       w.cfg.IdleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tunnelConn); ok {
				return withClient(ctx, tc.client)
			}
			return ctx
		},
	}
	w.h2 = &http2.Server{IdleTimeout: w.cfg.IdleTimeout, MaxConcurrentStreams: 100}
	_ = http2.ConfigureServer(w.h1, w.h2) // registers the GOAWAY on Shutdown; errors only on a TLS config
	w.proxy = w.newProxy()
	w.wg.Go(func() { _ = w.h1.Serve(w.h1in) })
}

// SetState puts a new mesh state in force; requests decided from now on
// resolve their targets and endpoints in it.
func (w *Waypoint) SetState(s *state.Snapshot) {
	w.state.Store(s)
	w.lb.forget(s)
}

// SetRoutes puts a set of HTTPRoutes and VirtualServices in force (nil: none); requests
// from now on are routed by it.
func (w *Waypoint) SetRoutes(r *Routes) { w.routes.Store(r) }

// SetAuthn puts a set of RequestAuthentications in force (nil: none);
// requests from now on are authenticated with it.
func (w *Waypoint) SetAuthn(a *Authn) { w.authn.Store(a) }

// State is the mesh state in force (nil before the first).
func (w *Waypoint) State() *state.Snapshot { return w.state.Load() }

// ID is the waypoint's SPIFFE ID.
func (w *Waypoint) ID() spiffeid.ID { return w.id }

// Ready returns nil once the waypoint can serve: a state is loaded and its
// SVID is at hand.
func (w *Waypoint) Ready() error {
	if w.state.Load() == nil {
		return ErrNoState
	}
	if _, err := w.cfg.SVID.GetX509SVID(); err != nil {
		return fmt.Errorf("waypoint: no SVID: %w", err)
	}
	return nil
}

// Serve accepts HBONE connections on l (port 15008) until Shutdown.
func (w *Waypoint) Serve(l net.Listener) error { return w.server.Serve(l) }

// ServeConn serves one accepted HBONE connection.
func (w *Waypoint) ServeConn(c net.Conn) { w.server.ServeConn(c) }

// Shutdown drains: no new tunnels (GOAWAY on HBONE), GOAWAY on h2c
// connections, idle HTTP/1.1 keep-alives closed, requests in flight
// finished; what is left when ctx ends is closed.
func (w *Waypoint) Shutdown(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- w.server.Shutdown(ctx) }()
	err := w.h1.Shutdown(ctx)
	if err != nil {
		w.h1.Close()
	}
	err = errors.Join(err, <-errc)
	w.wg.Wait()
	if w.ownsPool {
		w.cfg.Pool.Close()
	}
	return err
}

// Close stops at once.
func (w *Waypoint) Close() error {
	w.server.Close()
	err := w.h1.Close()
	w.wg.Wait()
	if w.ownsPool {
		w.cfg.Pool.Close()
	}
	return err
}

// ServeTunnel answers one HBONE tunnel, in phases: resolve the authority,
// accept, detect the protocol, then serve HTTP or relay TCP.
func (w *Waypoint) ServeTunnel(ctx context.Context, t *hbone.Tunnel) {
	cl := w.clientOf(t)
	target, err := w.resolve(t.Authority)
	if err != nil {
		t.Reject(err)
		w.refuseTunnel(cl, t.Authority, err)
		return
	}
	s, err := t.Hijack() // closed by whoever serves the connection
	if err != nil {
		w.log.Debug("tunnel gone before it was accepted", "peer", cl.peer.Principal, "error", err)
		return
	}
	cl.target = target
	c := newTunnelConn(s, cl.closeUpstream)
	c.client = cl
	switch detect(c, target.Protocol(), w.cfg.SniffTimeout) {
	case wireHTTP1:
		if err := w.h1in.push(c); err != nil {
			c.Close()
		}
	case wireHTTP2:
		w.h2.ServeConn(c, &http2.ServeConnOpts{Context: withClient(ctx, cl), BaseConfig: w.h1, Handler: w})
		c.Close()
	default:
		w.relayTCP(ctx, cl, c)
	}
}

// resolve finds the tunnel's target; errors carry the HBONE status.
func (w *Waypoint) resolve(authority netip.AddrPort) (state.Target, error) {
	snap := w.state.Load()
	if snap == nil {
		return state.Target{}, fmt.Errorf("%w: %w", hbone.ErrUpstream, ErrNoState)
	}
	target, err := snap.ResolveTarget(authority)
	if err != nil {
		return state.Target{}, fmt.Errorf("%w: %w", hbone.ErrBadRequest, err)
	}
	if target.Workload != nil && target.Workload.HasIdentity(w.id.String()) {
		return state.Target{}, fmt.Errorf("%w: %w: %s", hbone.ErrBadRequest, ErrLoop, authority)
	}
	return target, nil
}

// refuseTunnel reports a tunnel refused before it carried anything.
func (w *Waypoint) refuseTunnel(cl *client, authority netip.AddrPort, err error) {
	x := &exchange{kind: "tcp", start: time.Now(), end: time.Now(), peer: cl.peer, source: cl.source, target: state.Target{Addr: authority}}
	flag := FlagNoRoute
	if errors.Is(err, ErrLoop) {
		flag = FlagLoop
	}
	x.fail(flag, err)
	w.cfg.AccessLog.Write(x.entry())
}
