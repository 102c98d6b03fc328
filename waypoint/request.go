package waypoint

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// ServeHTTP handles one request from a tunnel, in phases: build the l7
// input, authenticate its JWT, authorize, choose the endpoint, proxy; then
// report. Any failure answers the client itself (401, 403, 503, or their
// gRPC forms) and never reaches upstream.
func (w *Waypoint) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	cl := clientFrom(r.Context())
	if cl == nil {
		http.Error(rw, "waypoint: request without a tunnel", http.StatusInternalServerError)
		return
	}
	x := newExchange(cl, r)
	rec := &recorder{ResponseWriter: rw}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, n: &x.reqCount}
	}
	defer w.finish(x, rec)
	snap := w.state.Load()
	in, target, err := cl.input(snap, RequestOf(r))
	if err != nil {
		x.fail(FlagNoRoute, err)
		unavailable(rec, x.grpc)
		return
	}
	x.target = target
	if a := w.authn.Load(); a != nil {
		auth, err := a.Authenticate(r, in.Destination)
		if err != nil {
			x.fail(FlagJWT, err)
			unauthenticated(rec, r, x.grpc, err)
			return
		}
		in.Request = RequestOf(r) // as the token left it: maybe without it, with its claims' headers
		in.Request.Auth = auth
	}
	if !w.authorize(r.Context(), in, x) {
		deny(rec, x.grpc)
		return
	}
	target, ok := w.applyRoutes(rec, r, snap, target, x)
	if !ok || !w.injectFault(rec, r, x) {
		return
	}
	if err = w.pickEndpoint(snap, target, x); err != nil {
		x.fail(FlagNoHealthy, err)
		unavailable(rec, x.grpc)
		return
	}
	ctx := withExchange(r.Context(), x)
	if x.rule != nil && x.rule.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.rule.timeout)
		defer cancel()
	}
	w.proxy.ServeHTTP(rec, r.WithContext(ctx))
}

// applyRoutes sends a request to a service by the HTTPRoutes attached to
// it: the matched rule's filters rewrite the request, and the target
// becomes one of its backends, by weight. It answers the request itself,
// and returns false, for a redirect, a service with routes none of which
// matches (404), or a rule without a backend to send to (500).
func (w *Waypoint) applyRoutes(rw http.ResponseWriter, r *http.Request, snap *state.Snapshot, target state.Target, x *exchange) (state.Target, bool) {
	if target.Service == nil {
		return target, true
	}
	m, attached := w.routes.Load().match(target.Service.Hostname, target.Port.Port, r)
	if !attached {
		return target, true
	}
	if m == nil {
		x.fail(FlagNoRoute, fmt.Errorf("waypoint: no route rule of %s matches", target.Service.Hostname))
		respond(rw, x.grpc, http.StatusNotFound, grpcUnimplemented, "route not found")
		return target, false
	}
	x.rule = m.rule
	if loc, status := m.rule.applyRequestFilters(r, m); loc != "" {
		rw.Header().Set("Location", loc)
		rw.WriteHeader(status)
		return target, false
	}
	b := m.rule.backend()
	if b == nil {
		x.fail(FlagNoRoute, fmt.Errorf("waypoint: route rule %s has no backend with a weight", m.rule.name()))
		respond(rw, x.grpc, http.StatusInternalServerError, grpcInternal, "no backend")
		return target, false
	}
	i := slices.IndexFunc(snap.Services, func(s *state.Service) bool { return s.Namespace == b.namespace && s.Name == b.name })
	if i < 0 {
		x.fail(FlagNoRoute, fmt.Errorf("waypoint: route rule %s: backend Service %s/%s is not in the state", m.rule.name(), b.namespace, b.name))
		respond(rw, x.grpc, http.StatusInternalServerError, grpcInternal, "backend not found")
		return target, false
	}
	svc := snap.Services[i]
	want := b.port
	if want == 0 { // a VirtualService destination without a port: the only one, else the port addressed, as Istio's waypoints pick
		want = target.Port.Port
		if len(svc.Ports) == 1 {
			want = int(svc.Ports[0].Port)
		}
	}
	port, ok := svc.Port(uint16(want))
	if !ok {
		x.fail(FlagNoRoute, fmt.Errorf("waypoint: route rule %s: Service %s/%s has no port %d", m.rule.name(), b.namespace, b.name, want))
		respond(rw, x.grpc, http.StatusInternalServerError, grpcInternal, "backend port not found")
		return target, false
	}
	return state.Target{Addr: target.Addr, Service: svc, Port: port}, true
}

// RequestOf is the input document's request for r: method, the path as
// received (query included; the engine derives url_path), host, protocol,
// and r's headers as net/http holds them (policy.Request.HTTPHeader):
// the engine reads the headers its rules name, and builds the document
// of them all (lower-case names, repeated values joined with ",", as
// Envoy presents them to policy) only where it needs the whole document.
// So a request costs no copy of its headers, which was a third of the
// decision's CPU in test/bench's HTTP phase. r.Header must not change
// until the decision is made.
func RequestOf(r *http.Request) *policy.Request {
	path := r.RequestURI
	if !strings.HasPrefix(path, "/") && path != "*" {
		path = r.URL.RequestURI() // absolute-form ("GET http://host/p"): its path and query
	}
	return &policy.Request{Method: r.Method, Path: path, Host: r.Host, Protocol: r.Proto, HTTPHeader: r.Header}
}

// authorize asks the policy; a deny or an error refuses.
func (w *Waypoint) authorize(ctx context.Context, in policy.Input, x *exchange) bool {
	d, err := w.cfg.Policy.Decide(ctx, in)
	x.decided(d)
	if err != nil {
		x.fail(FlagDenied, fmt.Errorf("waypoint: policy error, denied: %w", err))
		return false
	}
	if !d.Allow {
		x.fail(FlagDenied, nil)
		return false
	}
	return true
}

func newExchange(cl *client, r *http.Request) *exchange {
	return &exchange{
		kind: "http", start: time.Now(), peer: cl.peer, source: cl.source, target: cl.target,
		method: r.Method, path: r.RequestURI, host: r.Host, proto: r.Proto,
		traceparent: r.Header.Get("Traceparent"), grpc: isGRPC(r), series: &cl.series,
	}
}

// finish reports the exchange: metrics and one access-log line.
func (w *Waypoint) finish(x *exchange, rec *recorder) {
	x.end = time.Now()
	x.status = rec.status
	if x.status == 0 && !x.hasFlag(FlagDownstreamClosed) {
		x.status = http.StatusOK
	}
	x.reqBytes, x.respBytes = x.reqCount.Load(), rec.n
	if x.grpc {
		x.grpcStatus = grpcStatusOf(rec.Header())
	}
	if x.exhausted {
		x.addFlag(FlagRetryLimit)
	}
	w.finishEndpoint(x)
	w.cfg.Metrics.record(x)
	w.cfg.AccessLog.Write(x.entry())
}

// grpcStatusOf finds grpc-status where the proxy left it: in the headers
// (trailers-only), or among the trailers, declared or not.
func grpcStatusOf(h http.Header) string {
	for _, k := range []string{"Grpc-Status", http.TrailerPrefix + "Grpc-Status"} {
		if v := h.Get(k); v != "" {
			return v
		}
	}
	return ""
}

type exchangeKey struct{}

func withExchange(ctx context.Context, x *exchange) context.Context {
	return context.WithValue(ctx, exchangeKey{}, x)
}

func exchangeFrom(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	if x == nil {
		return &exchange{}
	}
	return x
}

// recorder notes the status and counts the body bytes of a response.
type recorder struct {
	http.ResponseWriter
	status int
	n      int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's Flusher.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush lets the proxy stream (it asserts http.Flusher on older paths).
func (r *recorder) Flush() { http.NewResponseController(r.ResponseWriter).Flush() }

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
