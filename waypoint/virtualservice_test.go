package waypoint

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "istio.io/api/networking/v1"

	"github.com/regomesh/regomesh/internal/testgo"
)

// The VirtualServices of the tests: web2's routes by every kind of
// match, in Istio's order (the first rule that matches wins, even when a
// later one is more specific); a catch-all for web, which the web
// HTTPRoute overrides on port 80; faults; and the flaky service's
// retries.
const testVirtualServices = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web2, namespace: shop}
spec:
  hosts: [web2]
  http:
  - name: first-wins
    match: [{uri: {prefix: /a}}]
    route: [{destination: {host: web2}}]
  - match: [{uri: {exact: /a/exact}}]
    route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 80}}}]
  - match: [{uri: {regex: "/r/[0-9]+"}, method: {exact: POST}}]
    route: [{destination: {host: web}}]
  - match: [{headers: {x-env: {prefix: can}}, queryParams: {v: {regex: "[0-9]+"}}}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /w}, withoutHeaders: {x-keep: {}}}]
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: web2}, weight: 0}
    - {destination: {host: web}, weight: 100}
  - match: [{uri: {prefix: /fault/abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web2}}]
  - match: [{uri: {prefix: /fault/none}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 0}}}
    route: [{destination: {host: web2}}]
  - match: [{uri: {prefix: /fault/delay}}]
    fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
    route: [{destination: {host: web2}}]
  - match: [{uri: {prefix: /host}, headers: {host: {exact: other.example}}}]
    route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: web2}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - match: [{uri: {prefix: /timeout}}]
    retries: {attempts: 1, perTryTimeout: 200ms, retryOn: reset}
    route: [{destination: {host: flaky}}]
  - retries: {attempts: 2, retryOn: "5xx,connect-failure"}
    route: [{destination: {host: flaky}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: shop}
spec:
  hosts: [web2]
  gateways: [istio-system/public]
  http:
  - route: [{destination: {host: web}}]
`

// loadRoutes puts the HTTPRoutes and VirtualServices of yaml in force,
// every request being allowed, and returns the load's notes.
func (m *testMesh) loadRoutes(t testing.TB, yaml string) []string {
	t.Helper()
	m.loadRego(t, "package mesh.policies.test.p\n\nopen := true\n")
	path := filepath.Join(t.TempDir(), "routes.yaml")
	write(t, path, yaml)
	res, err := ReadRoutes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	rs, notes, err := NewRouteSet(res, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	m.wp.SetRoutes(rs)
	return notes
}

// TestVirtualServiceRoutes: requests to a service with VirtualServices
// follow the first rule that matches, as Istio orders them; HTTPRoutes
// win over VirtualServices where both attach.
func TestVirtualServiceRoutes(t *testing.T) {
	m := newTestMesh(t)
	notes := m.loadRoutes(t, testRoutes+"---"+testVirtualServices)
	joined := strings.Join(notes, "\n")
	for _, want := range []string{
		"routes.yaml:99: VirtualService shop/ingress skipped: bound to gateways [istio-system/public], not the mesh",
		"web.shop.svc.cluster.local is routed by both HTTPRoutes and VirtualServices",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("notes:\n%s\nwant %q", joined, want)
		}
	}
	web2 := m.http1Client(netip.AddrPortFrom(web2VIPForTest, 80))
	for _, tc := range []struct {
		name, method, path string
		host               string // default web2.shop
		header             map[string]string
		status             int
		upstream           netip.Addr
		route              string
	}{
		{name: "the first rule wins over a later exact one", method: "GET", path: "/a/exact", status: 200, upstream: web2IP, route: "shop/web2#0"},
		{name: "regex and method", method: "POST", path: "/r/12", status: 200, upstream: webIP, route: "shop/web2#2"},
		{name: "regex matches whole paths", method: "POST", path: "/r/12x", status: 404},
		{name: "method differs", method: "GET", path: "/r/12", status: 404},
		{name: "header prefix and query regex", method: "GET", path: "/q?v=12", header: map[string]string{"X-Env": "canary"}, status: 200, upstream: webIP, route: "shop/web2#3"},
		{name: "header prefix differs", method: "GET", path: "/q?v=12", header: map[string]string{"X-Env": "prod"}, status: 404},
		{name: "query differs", method: "GET", path: "/q?v=x", header: map[string]string{"X-Env": "canary"}, status: 404},
		{name: "without a header", method: "GET", path: "/w", status: 200, upstream: webIP, route: "shop/web2#4"},
		{name: "with the header", method: "GET", path: "/w", header: map[string]string{"X-Keep": "1"}, status: 404},
		{name: "weights", method: "GET", path: "/split", status: 200, upstream: webIP, route: "shop/web2#5"},
		{name: "host header", method: "GET", path: "/host", host: "other.example", status: 200, upstream: webIP, route: "shop/web2#9"},
		{name: "other host", method: "GET", path: "/host", status: 404},
		{name: "abort at 0%", method: "GET", path: "/fault/none", status: 200, upstream: web2IP, route: "shop/web2#7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := m.request(t, web2, tc.method, "http://"+cmpOr(tc.host, "web2.shop")+tc.path, tc.header, tc.status)
			if tc.upstream.IsValid() && (e.Upstream != netip.AddrPortFrom(tc.upstream, 8080).String() || e.Route != tc.route || e.Attempts != 1) {
				t.Errorf("access log %+v, want upstream %s:8080, route %s, 1 attempt", e, tc.upstream, tc.route)
			}
			if tc.status == 404 && e.Flags != FlagNoRoute {
				t.Errorf("access log %+v, want flag %s", e, FlagNoRoute)
			}
		})
	}

	t.Run("an HTTPRoute wins where it attaches", func(t *testing.T) {
		e := m.request(t, m.http1Client(netip.AddrPortFrom(webVIP, 80)), "GET", "http://web.shop/public/a", nil, 200)
		if e.Upstream != netip.AddrPortFrom(webIP, 8080).String() || !strings.HasPrefix(e.Route, "shop/web#") {
			t.Errorf("port 80, where the HTTPRoute attaches: %+v, want the HTTPRoute to web", e)
		}
		e = m.request(t, m.http1Client(netip.AddrPortFrom(webVIP, 8081)), "GET", "http://web.shop/public/a", nil, 200)
		if e.Upstream != netip.AddrPortFrom(web2IP, 8080).String() || e.Route != "shop/web#0" {
			t.Errorf("port 8081, where no HTTPRoute attaches: %+v, want the VirtualService to web2", e)
		}
	})
}

// web2VIPForTest is the web2 service's address in testState.
var web2VIPForTest = netip.MustParseAddr("10.96.0.10")

// request sends one request, checks its status, and returns its
// access-log line.
func (m *testMesh) request(t *testing.T, c *http.Client, method, url string, header map[string]string, status int) AccessEntry {
	t.Helper()
	before := len(accessLines(t, m))
	a := do(t, c, method, url, header)
	if a.status != status {
		t.Fatalf("%s %s: %d %q, want %d", method, url, a.status, a.body, status)
	}
	waitRequests(t, m, before+1)
	return accessLines(t, m)[before]
}

// A fault's abort answers in the backend's place at 100%; its delay
// holds the request at least as long as it says.
func TestFaults(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	c := m.http1Client(netip.AddrPortFrom(web2VIPForTest, 80))

	before := len(accessLines(t, m))
	if a := do(t, c, "GET", "http://web2.shop/fault/abort", nil); a.status != 418 || a.body != FaultAbortBody {
		t.Fatalf("abort at 100%%: %d %q, want 418 %q", a.status, a.body, FaultAbortBody)
	}
	waitRequests(t, m, before+1)
	if e := accessLines(t, m)[before]; e.Flags != FlagFaultInjected || e.Upstream != "" || e.Attempts != 0 {
		t.Errorf("abort: access log %+v, want flag %s and nothing sent upstream", e, FlagFaultInjected)
	}

	start := time.Now()
	e := m.request(t, c, "GET", "http://web2.shop/fault/delay", nil, 200)
	if elapsed := time.Since(start); elapsed < 200*time.Millisecond {
		t.Errorf("delayed request answered after %s, want at least the fault's 200ms", elapsed)
	}
	if e.Flags != FlagDelayInjected || e.Upstream != netip.AddrPortFrom(web2IP, 8080).String() {
		t.Errorf("delay: access log %+v, want flag %s and the request forwarded", e, FlagDelayInjected)
	}
}

// A request whose first attempt fails is retried on the other endpoint,
// which answers, over HTTP/1.1 and h2c alike.
func TestRetryRecovers(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "h2c"} {
		t.Run(proto, func(t *testing.T) { testRetryRecovers(t, proto) })
	}
}

func testRetryRecovers(t *testing.T, proto string) {
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			http.Error(w, "first attempt fails", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok " + b.name))
	})
	c := m.http1Client(netip.AddrPortFrom(flakyVIP, 80))
	if proto == "h2c" {
		c = m.h2cClient(netip.AddrPortFrom(flakyVIP, 80))
	}
	before := len(accessLines(t, m))
	a := do(t, c, "POST", "http://flaky.shop/x", nil)
	if a.status != 200 {
		t.Fatalf("got %d %q, want the retry's 200", a.status, a.body)
	}
	failed, answered := m.flaky[0], m.flaky[1]
	if len(m.flaky[1].seen()) > 0 && m.flaky[1].seen()[0] == "1" {
		failed, answered = m.flaky[1], m.flaky[0]
	}
	if got := failed.seen(); len(got) != 1 || got[0] != "1" {
		t.Errorf("the failing endpoint saw attempts %q, want exactly the first", got)
	}
	if got := answered.seen(); len(got) != 1 || got[0] != "2" {
		t.Errorf("the other endpoint saw attempts %q, want the second only (a retry avoids the host tried)", got)
	}
	if a.body != "ok "+answered.name {
		t.Errorf("body %q, want the other endpoint's", a.body)
	}
	if got := answered.bodyLengths(); len(got) != 1 || got[0] != len("data") {
		t.Errorf("the retry carried bodies of %v bytes, want the request's 4", got)
	}
	waitRequests(t, m, before+1)
	if e := accessLines(t, m)[before]; e.Attempts != 2 || e.Flags != "-" || e.Status != 200 || e.Route != "shop/flaky#1" {
		t.Errorf("access log %+v, want 2 attempts, no flag, 200", e)
	}
	if n := metricSum(t, m, "regomesh_waypoint_retries_total", map[string]string{"destination_service": "flaky.shop.svc.cluster.local", "reason": "5xx"}); n != 1 {
		t.Errorf("regomesh_waypoint_retries_total = %v, want 1", n)
	}
}

// A tunnel that cannot be opened is retried under connect-failure; when
// none can, the client gets 503 flagged UF and URX.
func TestRetryConnectFailure(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [broken]
  http:
  - retries: {attempts: 2, retryOn: connect-failure}
    route: [{destination: {host: broken}}]
`)
	e := m.request(t, m.http1Client(netip.AddrPortFrom(netip.MustParseAddr("10.96.0.13"), 80)), "GET", "http://broken.shop/x", nil, 503)
	if e.Attempts != 3 || e.Flags != FlagUpstream+","+FlagRetryLimit {
		t.Errorf("access log %+v, want 3 attempts and flags UF,URX", e)
	}
	if n := metricSum(t, m, "regomesh_waypoint_retries_total", map[string]string{"reason": "connect-failure"}); n != 2 {
		t.Errorf("retries after a connect failure: %v, want 2", n)
	}
}

// A request whose body is longer than the waypoint keeps is sent once:
// it cannot be sent again.
func TestRetryNotWithALongBody(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		http.Error(w, "fail", http.StatusServiceUnavailable)
	})
	before := len(accessLines(t, m))
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://flaky.shop/x", strings.NewReader(strings.Repeat("x", DefaultRetryBufferBytes+1)))
	resp, err := m.http1Client(netip.AddrPortFrom(flakyVIP, 80)).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("got %d, want the one attempt's 503", resp.StatusCode)
	}
	waitRequests(t, m, before+1)
	if e := accessLines(t, m)[before]; e.Attempts != 1 || e.Flags != "-" {
		t.Errorf("access log %+v, want 1 attempt and no flag", e)
	}
	if n := len(m.flaky[0].seen()) + len(m.flaky[1].seen()); n != 1 {
		t.Errorf("the backends got %d attempts, want 1", n)
	}
}

// When every attempt fails, the client gets the last answer, flagged URX.
func TestRetriesExhausted(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		http.Error(w, "fail "+r.Header.Get("X-Envoy-Attempt-Count"), http.StatusBadGateway)
	})
	e := m.request(t, m.http1Client(netip.AddrPortFrom(flakyVIP, 80)), "GET", "http://flaky.shop/x", nil, http.StatusBadGateway)
	if e.Attempts != 3 || e.Flags != FlagRetryLimit {
		t.Errorf("access log %+v, want 3 attempts and flag %s", e, FlagRetryLimit)
	}
	one, two := m.flaky[0].seen(), m.flaky[1].seen()
	if len(one)+len(two) != 3 || len(one) == 0 || len(two) == 0 {
		t.Errorf("the endpoints saw attempts %q and %q, want 3 in all, the first two on different endpoints", one, two)
	}
	if n := metricSum(t, m, "istio_requests_total", map[string]string{"response_flags": FlagRetryLimit, "response_code": "502"}); n != 1 {
		t.Errorf("istio_requests_total{response_flags=URX} = %v, want 1", n)
	}
}

// An attempt that gets no answer within the per-try timeout is
// abandoned and retried.
func TestPerTryTimeout(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	abandoned := make(chan struct{}, 1)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Envoy-Attempt-Count") == "1" {
			select {
			case <-r.Context().Done(): // the waypoint gave the attempt up
				abandoned <- struct{}{}
			case <-time.After(20 * time.Second):
			}
			return
		}
		w.Write([]byte("ok " + b.name))
	})
	e := m.request(t, m.http1Client(netip.AddrPortFrom(flakyVIP, 80)), "GET", "http://flaky.shop/timeout", nil, 200)
	select {
	case <-abandoned:
	case <-time.After(10 * time.Second):
		t.Error("the first attempt's backend never saw it abandoned")
	}
	if e.Attempts != 2 || e.Route != "shop/flaky#0" {
		t.Errorf("access log %+v, want 2 attempts by shop/flaky#0", e)
	}
	if n := metricSum(t, m, "regomesh_waypoint_retries_total", map[string]string{"reason": "per-try-timeout"}); n != 1 {
		t.Errorf("retries after a per-try timeout: %v, want 1", n)
	}
}

// When many requests fail at once, the retry budget lets only
// DefaultRetryMinConcurrency retries be in flight (20% of 10 requests is
// less); the others answer with their first attempt's failure.
func TestRetryBudget(t *testing.T) {
	const clients = 10
	m := newTestMesh(t)
	m.loadRoutes(t, testVirtualServices)
	allFailing, release := make(chan struct{}), make(chan struct{})
	retriesIn := make(chan struct{}, clients)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Envoy-Attempt-Count") == "1" {
			if n == clients {
				close(allFailing)
			}
			<-allFailing // every first attempt fails at once
			http.Error(w, "fail", http.StatusServiceUnavailable)
			return
		}
		retriesIn <- struct{}{}
		<-release // retries stay in flight until every budget decision is made
		w.Write([]byte("ok"))
	})
	c := m.http1Client(netip.AddrPortFrom(flakyVIP, 80))
	statuses := make(chan int, clients)
	var done []<-chan struct{}
	for range clients {
		done = append(done, testgo.Go(t, func(ctx context.Context) {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://flaky.shop/x", nil)
			resp, err := c.Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}))
	}
	overflow := map[string]string{"destination_service": "flaky.shop.svc.cluster.local"}
	testgo.Eventually(t, "7 retries refused by the budget", func() bool {
		return metricSum(t, m, "regomesh_waypoint_retry_overflow_total", overflow) == clients-DefaultRetryMinConcurrency
	})
	for range DefaultRetryMinConcurrency {
		<-retriesIn
	}
	close(release)
	for _, d := range done {
		<-d
	}
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[200] != DefaultRetryMinConcurrency || count[503] != clients-DefaultRetryMinConcurrency {
		t.Errorf("answers by status %v, want %d retried to 200 and %d refused a retry with 503", count, DefaultRetryMinConcurrency, clients-DefaultRetryMinConcurrency)
	}
	if n := metricSum(t, m, "regomesh_waypoint_retries_total", nil); n != DefaultRetryMinConcurrency {
		t.Errorf("regomesh_waypoint_retries_total = %v, want %d", n, DefaultRetryMinConcurrency)
	}
	if n := len(m.flaky[0].seen()) + len(m.flaky[1].seen()); n != clients+DefaultRetryMinConcurrency {
		t.Errorf("the backends got %d attempts, want %d", n, clients+DefaultRetryMinConcurrency)
	}
}

// The budget's share: 20% of the requests in flight, and at least 3.
func TestRetryBudgetShare(t *testing.T) {
	for _, tc := range []struct {
		requests int64
		allowed  int
	}{{1, 3}, {10, 3}, {15, 3}, {20, 4}, {100, 20}} {
		b := newRetryBudget(DefaultRetryBudgetPercent, DefaultRetryMinConcurrency)
		n := 0
		for b.acquire("web", tc.requests) {
			n++
		}
		if n != tc.allowed {
			t.Errorf("%d requests in flight: %d retries allowed, want %d", tc.requests, n, tc.allowed)
		}
		b.release("web")
		if !b.acquire("web", tc.requests) || !b.acquire("other", tc.requests) {
			t.Errorf("%d requests in flight: a released retry is not available again, or destinations share a budget", tc.requests)
		}
	}
}

// A set with what the waypoint does not implement is refused whole, each
// problem named with its file:line.
func TestVirtualServicesRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vs.yaml")
	write(t, path, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: shop}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web, subset: v1}
    mirror: {host: web2}
  - matchs: []
  tcp: []
`)
	_, err := ReadRoutes([]string{path})
	for _, want := range []string{
		"vs.yaml:8: VirtualService shop/bad: spec.http[0].route[0].destination.subset: not supported by the waypoint (docs/waypoint.md#routing-virtualservice): subsets need DestinationRules",
		"vs.yaml:9: VirtualService shop/bad: spec.http[0].mirror: not supported by the waypoint",
		"vs.yaml:10: VirtualService shop/bad: spec.http[1].matchs: unknown field",
		"vs.yaml:11: VirtualService shop/bad: spec.tcp: not supported by the waypoint (docs/waypoint.md#routing-virtualservice): the waypoint routes HTTP only",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadRoutes: %v\nwant it to say %q", err, want)
		}
	}

	write(t, path, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: shop}
spec:
  hosts: ["*.shop.svc.cluster.local"]
  http:
  - match: [{uri: {regex: "(["}}]
    retries: {attempts: 2, retryOn: "5xx,sometimes"}
    fault: {abort: {httpStatus: 99}}
    route: [{destination: {host: web.shop}}]
`)
	res, err := ReadRoutes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = NewRouteSet(res, "cluster.local")
	for _, want := range []string{
		`vs.yaml:5: VirtualService shop/bad: spec.hosts[0]: "*.shop.svc.cluster.local" is not a Service`,
		`vs.yaml:7: VirtualService shop/bad: spec.http[0].match[0]: uri: regular expression "(["`,
		`vs.yaml:8: VirtualService shop/bad: spec.http[0].retries: retryOn: "sometimes" is not a condition the waypoint retries on`,
		`vs.yaml:9: VirtualService shop/bad: spec.http[0].fault: abort.httpStatus: 99 is not an HTTP status`,
		`vs.yaml:10: VirtualService shop/bad: spec.http[0].route[0].destination.host: "web.shop" is not a Service`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewRouteSet: %v\nwant it to say %q", err, want)
		}
	}
}

// Envoy's meanings of retryOn: which outcomes each condition retries.
func TestRetryOn(t *testing.T) {
	connect := &connectError{errors.New("no tunnel")}
	reset := errors.New("connection reset")
	perTry := &perTryTimeoutError{timeout: time.Second, err: context.DeadlineExceeded}
	for _, tc := range []struct {
		retryOn string
		resp    *http.Response
		err     error
		want    string
	}{
		{"connect-failure", nil, connect, "connect-failure"},
		{"connect-failure", nil, reset, ""},
		{"connect-failure", retryAnswer(503, ""), nil, ""},
		{"reset", nil, connect, "connect-failure"},
		{"reset", nil, reset, "reset"},
		{"reset", nil, perTry, "per-try-timeout"},
		{"reset", retryAnswer(503, ""), nil, ""},
		{"5xx", retryAnswer(500, ""), nil, "5xx"},
		{"5xx", nil, reset, "reset"},
		{"5xx", retryAnswer(404, ""), nil, ""},
		{"gateway-error", retryAnswer(500, ""), nil, ""},
		{"gateway-error", retryAnswer(504, ""), nil, "gateway-error"},
		{"retriable-4xx", retryAnswer(409, ""), nil, "retriable-4xx"},
		{"retriable-4xx", retryAnswer(404, ""), nil, ""},
		{"429,503", retryAnswer(429, ""), nil, "retriable-status-codes"},
		{"unavailable", retryAnswer(200, "14"), nil, "unavailable"},
		{"unavailable", retryAnswer(200, "0"), nil, ""},
		{"", retryAnswer(503, ""), nil, ""}, // Istio's default: not a 503 (since 1.22)
		{"", nil, connect, "connect-failure"},
		{"", retryAnswer(500, ""), nil, ""},
	} {
		p, err := compileRetry(retriesOf(tc.retryOn))
		if err != nil {
			t.Fatal(err)
		}
		if got := p.reason(t.Context(), tc.resp, tc.err); got != tc.want {
			t.Errorf("retryOn %q, outcome %v %v: reason %q, want %q", tc.retryOn, tc.resp, tc.err, got, tc.want)
		}
	}
}

func retriesOf(retryOn string) *networkingv1.HTTPRetry {
	return &networkingv1.HTTPRetry{Attempts: 1, RetryOn: retryOn}
}

// An HTTPRoute rule's retry (Gateway API, extended) retries the codes it
// lists, on another endpoint.
func TestHTTPRouteRetry(t *testing.T) {
	m := newTestMesh(t)
	m.loadRoutes(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 80}]
  rules:
  - retry: {attempts: 1, codes: [503], backoff: 10ms}
    timeouts: {backendRequest: 5s}
    backendRefs: [{name: flaky, port: 80}]
`)
	m.setFlakyAnswer(func(b *scriptedBackend, n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			http.Error(w, "first attempt fails", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok " + b.name))
	})
	e := m.request(t, m.http1Client(netip.AddrPortFrom(flakyVIP, 80)), "GET", "http://flaky.shop/x", nil, 200)
	if e.Attempts != 2 || e.Route != "shop/flaky#0" || e.Flags != "-" {
		t.Errorf("access log %+v, want 2 attempts by shop/flaky#0", e)
	}
	if one, two := m.flaky[0].seen(), m.flaky[1].seen(); len(one) != 1 || len(two) != 1 {
		t.Errorf("the endpoints saw attempts %q and %q, want one each", one, two)
	}
}
