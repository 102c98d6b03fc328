package waypoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// copyBuffers are the proxy's response copy buffers, reused: without a
// pool the ReverseProxy allocates 32 KiB for every response, which made
// a large share of the waypoint's allocations and GC work per request
// (test/bench's HTTP phase).
type copyBuffers struct{}

var _ httputil.BufferPool = copyBuffers{}

var copyBufferPool = sync.Pool{New: func() any { return new([32 << 10]byte) }}

func (copyBuffers) Get() []byte { return copyBufferPool.Get().(*[32 << 10]byte)[:] }

func (copyBuffers) Put(b []byte) {
	if len(b) == 32<<10 {
		copyBufferPool.Put((*[32 << 10]byte)(b))
	}
}

// newProxy is the one reverse proxy of the waypoint: the request's
// exchange says where it goes, and the request's client which transport
// carries it.
func (w *Waypoint) newProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			x := exchangeFrom(pr.In.Context())
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = x.upstream.String()
			// pr.Out.Host keeps the client's Host (:authority).
		},
		ModifyResponse: func(resp *http.Response) error {
			if x := exchangeFrom(resp.Request.Context()); x != nil && x.rule != nil {
				x.rule.applyResponseFilters(resp.Header)
			}
			return nil
		},
		Transport: upstreamTransport{w},
		// A response of unknown length (gRPC, chunked, anything streamed)
		// and server-sent events are flushed at every write: the
		// ReverseProxy does so whatever FlushInterval says. A response
		// whose length is known goes out with its headers in as few writes
		// as the buffer allows: flushing each write (-1) cost a tunnel
		// write for the headers and another for the body of every small
		// response (test/bench's HTTP phase).
		FlushInterval: 0,
		BufferPool:    copyBuffers{},
		ErrorLog:      slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(rw http.ResponseWriter, r *http.Request, err error) {
			x := exchangeFrom(r.Context())
			var perTry *perTryTimeoutError
			switch {
			case errors.As(err, &perTry):
				x.fail(FlagTimeout, fmt.Errorf("waypoint: rule %s: %w", x.rule.name(), err))
			case x.rule != nil && x.rule.timeout > 0 && errors.Is(err, context.DeadlineExceeded):
				x.fail(FlagTimeout, fmt.Errorf("waypoint: rule %s: no response within its %s request timeout: %w", x.rule.name(), x.rule.timeout, err))
			default:
				x.fail(FlagUpstream, err)
				unavailable(rw, x.grpc)
				return
			}
			respond(rw, x.grpc, http.StatusGatewayTimeout, grpcUnavailable, "upstream request timeout")
		},
	}
}

// upstreamTransport sends each request on its client's transport:
// HTTP/1.1 for HTTP/1.1 clients, h2c for HTTP/2 ones (gRPC).
type upstreamTransport struct{ w *Waypoint }

func (t upstreamTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	cl := clientFrom(r.Context())
	if cl == nil {
		return nil, fmt.Errorf("waypoint: request without a tunnel")
	}
	rt, err := cl.transport(t.w, r.ProtoMajor == 2)
	if err != nil {
		return nil, err
	}
	return t.w.send(rt, r, exchangeFrom(r.Context()))
}

// transport returns the client's upstream transport for the protocol,
// making it on first use.
func (cl *client) transport(w *Waypoint, h2 bool) (http.RoundTripper, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.closed {
		return nil, fmt.Errorf("waypoint: the client's tunnel has ended")
	}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return w.dialUpstream(ctx, cl, addr) }
	if h2 {
		if cl.h2 == nil {
			cl.h2 = &http2.Transport{
				AllowHTTP: true, DisableCompression: true, ReadIdleTimeout: 30 * time.Second,
				DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
					return dial(ctx, network, addr)
				},
			}
		}
		return cl.h2, nil
	}
	if cl.h1 == nil {
		cl.h1 = &http.Transport{
			DialContext: dial, DisableCompression: true, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second,
		}
	}
	return cl.h1, nil
}

// dialUpstream opens a tunnel to the ztunnel of the endpoint at addr
// (ip:targetPort): its HBONE port, presenting the waypoint's SVID,
// requiring the endpoint's identity, with Forwarded naming the original
// client and the client tunnel's trace context.
func (w *Waypoint) dialUpstream(ctx context.Context, cl *client, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("waypoint: upstream %q: %w", addr, err)
	}
	snap := w.state.Load()
	ep, ok := snap.WorkloadByIP(ap.Addr())
	if !ok {
		return nil, fmt.Errorf("waypoint: upstream %s: %w: no workload there", addr, ErrNoEndpoint)
	}
	peer, err := spiffeid.FromString(ep.Identity())
	if err != nil {
		return nil, fmt.Errorf("waypoint: upstream %s: identity %q: %w", addr, ep.Identity(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
	defer cancel()
	s, err := w.cfg.Pool.Dial(ctx, hbone.Request{
		Source: w.cfg.SVID, Peer: peer,
		Addr:      netip.AddrPortFrom(ap.Addr(), HBONEPort),
		Authority: ap, Forwarded: cl.original(), TraceParent: cl.trace,
	})
	if err != nil {
		return nil, &connectError{fmt.Errorf("waypoint: upstream %s: %w", addr, err)}
	}
	return s, nil
}

// pickEndpoint chooses where a request or connection for target goes,
// into x: the workload itself, or one of the service's endpoints (see
// balancer) at the port's targetPort; then w.finishEndpoint must follow.
// The waypoint never picks itself, and only tunnels to workloads in the
// mesh.
func (w *Waypoint) pickEndpoint(snap *state.Snapshot, target state.Target, x *exchange) error {
	x.dest = target
	return w.pickFrom(snap, x, nil)
}

// pickFrom chooses x's endpoint for x.dest, avoiding the endpoints in
// avoid while others are left (a retry's previous hosts).
func (w *Waypoint) pickFrom(snap *state.Snapshot, x *exchange, avoid []*state.Workload) error {
	target := x.dest
	if wl := target.Workload; wl != nil {
		if wl.Protocol != state.HBONE {
			return fmt.Errorf("%w: %s/%s is outside the mesh", ErrNoEndpoint, wl.Namespace, wl.Name)
		}
		x.endpoint, x.upstream = wl, netip.AddrPortFrom(target.Addr.Addr().Unmap(), target.Addr.Port())
		return nil
	}
	var eps []*state.Workload
	for _, ep := range snap.Endpoints(target.Service) {
		if ep.Protocol == state.HBONE && len(ep.IPs) > 0 && !ep.HasIdentity(w.id.String()) {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return fmt.Errorf("%w: service %s", ErrNoEndpoint, target.Service.Hostname)
	}
	choices := eps
	if len(avoid) > 0 {
		fresh := slices.DeleteFunc(slices.Clone(eps), func(ep *state.Workload) bool {
			return slices.ContainsFunc(avoid, func(a *state.Workload) bool { return a.UID == ep.UID })
		})
		if len(fresh) > 0 {
			choices = fresh
		}
	}
	ep := w.lb.pick(choices)
	x.endpoint, x.upstream, x.balanced = ep, netip.AddrPortFrom(ep.IPs[0], uint16(target.Port.TargetPort)), eps
	return nil
}

// finishEndpoint tells the balancer how the request or connection that
// pickEndpoint sent to a service's endpoint ended: a 5xx answer, or an
// upstream that could not be reached, counts against the endpoint.
func (w *Waypoint) finishEndpoint(x *exchange) {
	if x.balanced == nil {
		return
	}
	w.lb.done(x.endpoint, x.balanced, x.hasFlag(FlagUpstream) || x.hasFlag(FlagTimeout) || x.status >= 500)
	x.balanced = nil
}
