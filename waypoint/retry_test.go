package waypoint

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	networkingv1 "istio.io/api/networking/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Istio's default retry policy, in force where no route writes retries:
// what it retries (a tunnel not opened, a refused stream, gRPC
// UNAVAILABLE and CANCELLED) and what it leaves to the client (any other
// answer, a 503 included, and a reset or timeout after the request left).
func TestDefaultRetryPolicy(t *testing.T) {
	for _, p := range []*retryPolicy{(*routeRule)(nil).retryPolicy(), (&routeRule{}).retryPolicy()} {
		checkReasons(t, p, map[string]string{
			"no tunnel": "connect-failure", "refused stream": "refused-stream", "grpc unavailable": "unavailable", "grpc cancelled": "cancelled",
		})
		if p.retries != DefaultRetries || !p.previousHosts || p.perTry != 0 {
			t.Errorf("policy %+v, want %d retries to other hosts, no per-try timeout", p, DefaultRetries)
		}
	}
	off, err := compileRetry(&networkingv1.HTTPRetry{Attempts: 0})
	if err != nil {
		t.Fatal(err)
	}
	if p := (&routeRule{retry: off}).retryPolicy(); p != nil {
		t.Errorf("retries {attempts: 0}: policy %+v, want none", p)
	}
	hr, err := compileHTTPRouteRetry(nil, nil)
	if err != nil || (&routeRule{retry: hr}).retryPolicy() != defaultRetryPolicy {
		t.Errorf("an HTTPRoute rule without retry: %+v %v, want Istio's default policy", hr, err)
	}
}

// Through the waypoint, with nothing routing the flaky service: a first
// attempt answered with gRPC UNAVAILABLE is retried on the other
// endpoint, over HTTP/1.1 and h2c; a 503 is not; a VirtualService with
// retries {attempts: 0} turns the retry off.
func TestDefaultRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		proto    string
		routes   string
		fail     func(w http.ResponseWriter)
		status   int
		attempts int
	}{
		{name: "unavailable retried", proto: "HTTP/1.1", fail: grpcUnavailableAnswer, status: 200, attempts: 2},
		{name: "unavailable retried over h2c", proto: "h2c", fail: grpcUnavailableAnswer, status: 200, attempts: 2},
		{name: "503 answered", proto: "HTTP/1.1", fail: func(w http.ResponseWriter) { http.Error(w, "busy", 503) }, status: 503, attempts: 1},
		{name: "retries disabled", proto: "HTTP/1.1", fail: grpcUnavailableAnswer, status: 200, attempts: 1, routes: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: flaky}}]
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMesh(t)
			m.loadRego(t, "package mesh.policies.test.p\n\nopen := true\n")
			if tc.routes != "" {
				m.loadRoutes(t, tc.routes)
			}
			m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					tc.fail(w)
					return
				}
				w.Write([]byte("ok " + b.name))
			})
			c := m.http1Client(netip.AddrPortFrom(flakyVIP, 80))
			if tc.proto == "h2c" {
				c = m.h2cClient(netip.AddrPortFrom(flakyVIP, 80))
			}
			e := m.request(t, c, "GET", "http://flaky.shop/x", nil, tc.status)
			if e.Attempts != tc.attempts || e.Flags != "-" {
				t.Errorf("access log %+v, want %d attempts and no flag", e, tc.attempts)
			}
			one, two := m.flaky[0].seen(), m.flaky[1].seen()
			if len(one)+len(two) != tc.attempts || len(one) > 1 || len(two) > 1 {
				t.Errorf("the endpoints saw attempts %q and %q, want %d, each on its own endpoint", one, two, tc.attempts)
			}
			wantRetries := float64(tc.attempts - 1)
			if n := metricSum(t, m, "regomesh_waypoint_retries_total", map[string]string{"destination_service": "flaky.shop.svc.cluster.local", "reason": "unavailable"}); n != wantRetries {
				t.Errorf("regomesh_waypoint_retries_total{reason=unavailable} = %v, want %v", n, wantRetries)
			}
		})
	}
}

// grpcUnavailableAnswer answers as a gRPC server that cannot serve now
// (trailers-only, status 14).
func grpcUnavailableAnswer(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Grpc-Status", "14")
	w.Header().Set("Grpc-Message", "not now")
	w.WriteHeader(http.StatusOK)
}

// An HTTPRoute rule's retry is what istiod makes of it: connect-failure,
// refused-stream, gRPC unavailable and cancelled, and its codes; never a
// reset or a per-try timeout after the request left; attempts 2 when
// unsaid, and 0 retrying nothing.
func TestHTTPRouteRetryConditions(t *testing.T) {
	one := 1
	p, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{Attempts: &one, Codes: []gwv1.HTTPRouteRetryStatusCode{500}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkReasons(t, p, map[string]string{
		"no tunnel": "connect-failure", "refused stream": "refused-stream", "grpc unavailable": "unavailable", "grpc cancelled": "cancelled",
		"500": "retriable-status-codes",
	})
	if p.retries != 1 {
		t.Errorf("%d retries, want 1", p.retries)
	}
	if d, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{}, nil); err != nil || d.retries != DefaultHTTPRouteRetries {
		t.Errorf("attempts unsaid: %+v %v, want %d retries", d, err, DefaultHTTPRouteRetries)
	}
	zero := 0
	if off, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{Attempts: &zero}, nil); err != nil || (&routeRule{retry: off}).retryPolicy() != nil {
		t.Errorf("attempts 0: %+v %v, want no retries", off, err)
	}
	perTry := gwv1.Duration("2s")
	bounded, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{Attempts: &zero}, &gwv1.HTTPRouteTimeouts{BackendRequest: &perTry})
	if err != nil || bounded.retries != 0 || bounded.perTry != 2*time.Second {
		t.Errorf("attempts 0 with backendRequest 2s: %+v %v, want one attempt bounded by 2s", bounded, err)
	}
	minus := -1
	if _, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{Attempts: &minus}, nil); err == nil {
		t.Error("attempts -1 accepted")
	}
	if _, err := compileHTTPRouteRetry(&gwv1.HTTPRouteRetry{Attempts: &zero, Codes: []gwv1.HTTPRouteRetryStatusCode{200}}, nil); err == nil {
		t.Error("attempts 0 with code 200 accepted: the codes are checked whatever the attempts")
	}
}

// retryAnswer is an upstream's response with status and, if given, a
// grpc-status header.
func retryAnswer(status int, grpc string) *http.Response {
	h := http.Header{}
	if grpc != "" {
		h.Set("Grpc-Status", grpc)
	}
	return &http.Response{StatusCode: status, Header: h}
}

// retryOutcomes are an attempt's outcomes, for the tests of what a retry
// policy retries.
var retryOutcomes = []struct {
	name string
	resp *http.Response
	err  error
}{
	{"no tunnel", nil, &connectError{errors.New("no tunnel")}},
	{"refused stream", nil, http2.StreamError{Code: http2.ErrCodeRefusedStream}},
	{"grpc unavailable", retryAnswer(200, "14"), nil},
	{"grpc cancelled", retryAnswer(200, "1"), nil},
	{"grpc internal", retryAnswer(200, "13"), nil},
	{"500", retryAnswer(500, ""), nil},
	{"502", retryAnswer(502, ""), nil},
	{"503", retryAnswer(503, ""), nil},
	{"reset", nil, errors.New("connection reset")},
	{"per-try timeout", nil, &perTryTimeoutError{timeout: time.Second, err: context.DeadlineExceeded}},
	{"200", retryAnswer(200, ""), nil},
}

// checkReasons checks the condition p retries each of retryOutcomes on:
// want's, or none.
func checkReasons(t *testing.T, p *retryPolicy, want map[string]string) {
	t.Helper()
	for _, o := range retryOutcomes {
		if got := p.reason(t.Context(), o.resp, o.err); got != want[o.name] {
			t.Errorf("%s: reason %q, want %q", o.name, got, want[o.name])
		}
	}
}
