package waypoint

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	networkingv1 "istio.io/api/networking/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Retries, as Envoy's router makes them for Istio.
const (
	// DefaultRetryBudgetPercent of a destination's requests in flight may
	// be retries in flight, as Envoy's retry budget allows by default...
	DefaultRetryBudgetPercent = 20
	// DefaultRetryMinConcurrency ...and always this many, as in Envoy.
	DefaultRetryMinConcurrency = 3
	// DefaultRetryBufferBytes of a request body are kept for retries; a
	// longer body is streamed once and never retried.
	DefaultRetryBufferBytes = 64 << 10
	// defaultRetryBackoff is Envoy's base interval between attempts; the
	// n-th retry waits a random time below base×(2ⁿ−1), at most 10×base.
	defaultRetryBackoff = 25 * time.Millisecond
	// attemptCountHeader numbers each attempt upstream (1 for the first),
	// as Envoy does for Istio's routes.
	attemptCountHeader = "X-Envoy-Attempt-Count"
)

// retryPolicy is a rule's retries, compiled.
type retryPolicy struct {
	retries       int           // attempts after the first
	perTry        time.Duration // 0: only the rule's timeout
	on            retryOn
	codes         []int             // retriable-status-codes
	grpc          map[string]string // grpc-status value -> its retryOn name
	previousHosts bool              // a retry avoids the endpoints tried already
	backoff       time.Duration
	atLeast       bool // backoff is a minimum (the Gateway API's), not Envoy's base interval
}

// retryOn is a set of Envoy's retry conditions.
type retryOn uint

const (
	retry5xx retryOn = 1 << iota
	retryGatewayError
	retryReset
	retryConnectFailure
	retryRetriable4xx
	retryRefusedStream
	retryStatusCodes
)

var retryOnNames = map[string]retryOn{
	"5xx": retry5xx, "gateway-error": retryGatewayError, "reset": retryReset, "connect-failure": retryConnectFailure,
	"retriable-4xx": retryRetriable4xx, "refused-stream": retryRefusedStream, "retriable-status-codes": retryStatusCodes,
}

// grpcRetryOn are Envoy's gRPC conditions: the grpc-status of a
// trailers-only answer.
var grpcRetryOn = map[string]string{"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8", "internal": "13", "unavailable": "14"}

// defaultRetryOn is Istio's when retries name no retryOn, and the
// conditions of its default retry policy (istiod's retry.DefaultPolicy):
// retriable-status-codes names no code, since Istio 1.22 no longer
// retries a 503 by default (the backend may have acted on the request).
const defaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

// DefaultRetries is how many times a request is retried when its route
// writes no retries, or when nothing routes it: Istio's default retry
// policy, which retries only what did not reach the backend or what it
// refused (defaultRetryOn), on another endpoint, within the retry budget.
const DefaultRetries = 2

// defaultRetryPolicy is Istio's default retry policy (DefaultRetries on
// defaultRetryOn, previous hosts avoided, Envoy's backoff), in force
// wherever no route says otherwise.
var defaultRetryPolicy = func() *retryPolicy {
	p, err := compileRetry(&networkingv1.HTTPRetry{Attempts: DefaultRetries, RetryOn: defaultRetryOn})
	if err != nil {
		panic(err)
	}
	return p
}()

// noRetries is a rule's retries that disable retrying ({attempts: 0}).
var noRetries = &retryPolicy{}

// compileRetry reads a VirtualService's retries; attempts 0 disables them
// (noRetries), as in Istio.
func compileRetry(r *networkingv1.HTTPRetry) (*retryPolicy, error) {
	if r.GetAttempts() < 0 {
		return nil, errors.New("attempts: must not be negative")
	}
	if r.GetAttempts() == 0 {
		return noRetries, nil
	}
	p := &retryPolicy{retries: int(r.GetAttempts()), previousHosts: true, backoff: defaultRetryBackoff, grpc: map[string]string{}}
	if d := r.GetPerTryTimeout(); d != nil {
		if p.perTry = d.AsDuration(); p.perTry <= 0 {
			return nil, errors.New("perTryTimeout: must be positive")
		}
	}
	if d := r.GetBackoff(); d != nil {
		if p.backoff = d.AsDuration(); p.backoff <= 0 {
			return nil, errors.New("backoff: must be positive")
		}
	}
	if v := r.GetRetryIgnorePreviousHosts(); v != nil {
		p.previousHosts = v.GetValue()
	}
	on := r.GetRetryOn()
	if on == "" {
		on = defaultRetryOn
	}
	for _, name := range strings.Split(on, ",") {
		name = strings.TrimSpace(name)
		if c, ok := retryOnNames[name]; ok {
			p.on |= c
		} else if code, ok := grpcRetryOn[name]; ok {
			p.grpc[code] = name
		} else if n, err := strconv.Atoi(name); err == nil && n >= 100 && n <= 599 {
			p.on |= retryStatusCodes
			p.codes = append(p.codes, n)
		} else {
			return nil, fmt.Errorf("retryOn: %q is not a condition the waypoint retries on; it knows 5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes, status codes (\"503\"), and for gRPC cancelled, deadline-exceeded, internal, resource-exhausted, unavailable", name)
		}
	}
	return p, nil
}

// DefaultHTTPRouteRetries is how many times an HTTPRoute rule's retry
// retries when it names no attempts: Istio's default.
const DefaultHTTPRouteRetries = 2

// compileHTTPRouteRetry reads an HTTPRoute rule's retry (Gateway API,
// extended support) and timeouts.backendRequest, the per-try timeout, as
// istiod converts them for Envoy: what did not reach the backend (no
// tunnel, a refused stream) and gRPC UNAVAILABLE and CANCELLED are
// retried, and the codes listed; a reset or a timeout after the request
// left is not (the backend may have acted on it). attempts defaults to
// Istio's 2; 0 retries nothing, its one attempt still bounded by
// backendRequest (where istiod leaves no timeout at all). Without retry,
// Istio's default policy applies, each attempt bounded by a
// backendRequest timeout.
func compileHTTPRouteRetry(r *gwv1.HTTPRouteRetry, t *gwv1.HTTPRouteTimeouts) (*retryPolicy, error) {
	var perTry time.Duration
	if t != nil && t.BackendRequest != nil {
		d, err := time.ParseDuration(string(*t.BackendRequest))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("timeouts.backendRequest: %q is not a positive duration", *t.BackendRequest)
		}
		perTry = d
	}
	if r == nil {
		if perTry == 0 {
			return nil, nil // Istio's default policy
		}
		p := *defaultRetryPolicy
		p.perTry = perTry
		return &p, nil
	}
	p := &retryPolicy{
		retries: ptrOr(r.Attempts, DefaultHTTPRouteRetries), perTry: perTry,
		on: retryConnectFailure | retryRefusedStream, grpc: map[string]string{"14": "unavailable", "1": "cancelled"},
		previousHosts: true, backoff: defaultRetryBackoff, atLeast: true,
	}
	if p.retries < 0 {
		return nil, errors.New("retry.attempts: must not be negative")
	}
	for _, c := range r.Codes {
		if c < 400 || c > 599 {
			return nil, fmt.Errorf("retry.codes: %d is not a status from 400 to 599", c)
		}
		p.on |= retryStatusCodes
		p.codes = append(p.codes, int(c))
	}
	if r.Backoff != nil {
		d, err := time.ParseDuration(string(*r.Backoff))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("retry.backoff: %q is not a positive duration", *r.Backoff)
		}
		p.backoff = d
	}
	switch {
	case p.retries == 0 && perTry == 0:
		return noRetries, nil
	case p.retries == 0:
		// One attempt, bounded by backendRequest, as the Gateway API
		// says; istiod's conversion drops the timeout with the retries.
		return &retryPolicy{perTry: perTry}, nil
	}
	return p, nil
}

// retryPolicy is the rule's: Istio's default policy without a rule or
// when the rule writes no retries; nil when its retries disable retrying.
func (r *routeRule) retryPolicy() *retryPolicy {
	switch {
	case r == nil || r.retry == nil:
		return defaultRetryPolicy
	case r.retry == noRetries:
		return nil
	}
	return r.retry
}

// reason is the retryOn condition an attempt's outcome meets, with
// Envoy's meanings: 5xx, gateway-error and reset retry a reset or a
// per-try timeout too, and these and connect-failure retry a tunnel that
// could not be opened; "" when it meets none, or the client is gone.
func (p *retryPolicy) reason(client context.Context, resp *http.Response, err error) string {
	if client.Err() != nil {
		return ""
	}
	if err != nil {
		var ce *connectError
		var se http2.StreamError
		switch {
		case errors.As(err, &ce) && p.on&(retryConnectFailure|retryReset|retry5xx|retryGatewayError) != 0:
			return "connect-failure"
		case errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream && p.on&(retryRefusedStream|retryReset|retry5xx|retryGatewayError) != 0:
			return "refused-stream"
		case errors.As(err, new(*perTryTimeoutError)) && p.on&(retry5xx|retryGatewayError|retryReset) != 0:
			return "per-try-timeout"
		case p.on&(retry5xx|retryGatewayError|retryReset) != 0 && !errors.As(err, &ce):
			return "reset"
		}
		return ""
	}
	switch s := resp.StatusCode; {
	case p.on&retry5xx != 0 && s >= 500:
		return "5xx"
	case p.on&retryGatewayError != 0 && (s == 502 || s == 503 || s == 504):
		return "gateway-error"
	case p.on&retryRetriable4xx != 0 && s == http.StatusConflict:
		return "retriable-4xx"
	case p.on&retryStatusCodes != 0 && slices.Contains(p.codes, s):
		return "retriable-status-codes"
	}
	return p.grpc[resp.Header.Get("Grpc-Status")]
}

// backoffFor is how long to wait before the n-th retry: Envoy's fully
// jittered exponential backoff, never below an HTTPRoute's backoff.
func (p *retryPolicy) backoffFor(n int) time.Duration {
	upper := p.backoff * time.Duration(1<<min(n, 4)-1)
	d := rand.N(min(upper, 10*p.backoff) + 1)
	if p.atLeast {
		d = max(d, p.backoff)
	}
	return d
}

// connectError is a tunnel to the endpoint that could not be opened:
// nothing reached it (Envoy's connect-failure).
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// perTryTimeoutError is an attempt that got no answer within the retry
// policy's perTryTimeout.
type perTryTimeoutError struct {
	timeout time.Duration
	err     error
}

func (e *perTryTimeoutError) Error() string {
	return fmt.Sprintf("no response within the per-try timeout %s: %v", e.timeout, e.err)
}
func (e *perTryTimeoutError) Unwrap() error { return e.err }
