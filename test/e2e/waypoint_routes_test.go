package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The routed services of TestWaypointFullPath, all on the server pod:
// split (through the waypoint) is an HTTPRoute's weighted split between
// split-v1 (8081) and split-v2 (8082); flaky (through the waypoint, 8083)
// is a VirtualService with retries, whose backend fails each request's
// first attempt; unavailable (through the waypoint, 8084) has no route, so
// Istio's default retries apply, and its backend answers each request's
// first attempt with gRPC UNAVAILABLE.
const (
	splitVIP       = "10.96.0.11"
	flakyVIP       = "10.96.0.14"
	unavailableVIP = "10.96.0.15"
)

// splitWeights are the HTTPRoute's weights: v2 gets 3 requests in 4.
const splitV1Weight, splitV2Weight = 1, 3

// webRoutes is the waypoint's --routes file.
var webRoutes = fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: split}]
  rules:
  - backendRefs:
    - {name: split-v1, port: 80, weight: %d}
    - {name: split-v2, port: 80, weight: %d}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 2, retryOn: 5xx}
`, splitV1Weight, splitV2Weight)

// routedServices are the services webRoutes routes, and their backends.
func routedServices() []state.LocalService {
	svc := func(name, vip string, target int, waypoint string) state.LocalService {
		return state.LocalService{
			Name: name, Namespace: "shop", VIPs: []string{vip}, Selector: map[string]string{"app": "server"},
			Waypoint: waypoint, Ports: []state.ServicePort{{Port: 80, TargetPort: target, Name: "http"}},
		}
	}
	return []state.LocalService{
		svc("split", splitVIP, 8080, "shop/waypoint"),
		svc("split-v1", "10.96.0.12", 8081, ""),
		svc("split-v2", "10.96.0.13", 8082, ""),
		svc("flaky", flakyVIP, 8083, "shop/waypoint"),
		svc("unavailable", unavailableVIP, 8084, "shop/waypoint"),
	}
}

// serveRouted runs the routed services' backends in the server pod.
// The flaky one (8083) answers 503 to the first attempt of each
// x-e2e-request id and 200 to the next, the unavailable one (8084) gRPC
// UNAVAILABLE (trailers-only) and then 200; it returns how many attempts
// each id took.
func serveRouted(t *testing.T, m *mesh) (attempts func(id string) int) {
	t.Helper()
	for port, version := range map[int]string{8081: "v1", 8082: "v2"} {
		serveHandler(t, m, "server", port, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, version)
		}))
	}
	var mu sync.Mutex
	seen := map[string]int{}
	failFirst := func(port int, fail func(w http.ResponseWriter)) {
		serveHandler(t, m, "server", port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get("x-e2e-request")
			mu.Lock()
			seen[id]++
			n := seen[id]
			mu.Unlock()
			if n == 1 {
				fail(w)
				return
			}
			fmt.Fprintf(w, "%s served at attempt %s", id, r.Header.Get("x-envoy-attempt-count"))
		}))
	}
	failFirst(8083, func(w http.ResponseWriter) {
		http.Error(w, "the first attempt fails", http.StatusServiceUnavailable)
	})
	failFirst(8084, func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.WriteHeader(http.StatusOK)
	})
	return func(id string) int {
		mu.Lock()
		defer mu.Unlock()
		return seen[id]
	}
}

// testSplit sends splitRequests requests to the split service on one
// kept-alive connection and checks that split-v2's share is what its
// weight says, within bounds a correct split leaves with probability
// below 1e-6 (binomialBounds).
func testSplit(t *testing.T, m *mesh, wpLog *syncbuf.Buffer) {
	// 400 requests: a second or two on this path. With p = 3/4 the
	// bounds are about ±45 around 300, so a 50/50 split (200) or one
	// backend only (400) fails, and a correct one fails once in a
	// million runs at most.
	const splitRequests = 400
	p := float64(splitV2Weight) / float64(splitV1Weight+splitV2Weight)
	lo, hi := binomialBounds(splitRequests, p, 1e-6)
	client := keptAliveClient(t, m, "client")
	counts := map[string]int{}
	for i := range splitRequests {
		status, body := getWith(t, client, fmt.Sprintf("http://%s/split/%d", splitVIP, i))
		if status != http.StatusOK {
			t.Fatalf("GET /split/%d: %d %q, want 200", i, status, body)
		}
		counts[body]++
	}
	if counts["v1"]+counts["v2"] != splitRequests {
		t.Fatalf("answers %v, want only v1 and v2", counts)
	}
	if v2 := counts["v2"]; v2 < lo || v2 > hi {
		t.Errorf("split-v2 served %d of %d requests, want %d to %d (weight %d of %d)", v2, splitRequests, lo, hi, splitV2Weight, splitV1Weight+splitV2Weight)
	}
	e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/split/0" })
	if e.Route != "shop/split#0" {
		t.Errorf("waypoint access log = %+v, want route_name shop/split#0", e)
	}
	t.Logf("split over %d requests: %v (split-v2 bounds %d to %d)", splitRequests, counts, lo, hi)
}

// binomialBounds returns lo and hi such that a count X ~ Binomial(n, p)
// falls below lo with probability under alpha/2 and above hi with
// probability under alpha/2: a test that wants lo <= X <= hi fails a
// correct implementation with probability under alpha.
func binomialBounds(n int, p, alpha float64) (lo, hi int) {
	pmf := func(k int) float64 {
		ln, _ := math.Lgamma(float64(n + 1))
		lk, _ := math.Lgamma(float64(k + 1))
		lnk, _ := math.Lgamma(float64(n - k + 1))
		return math.Exp(ln - lk - lnk + float64(k)*math.Log(p) + float64(n-k)*math.Log1p(-p))
	}
	for below := 0.0; lo < n && below+pmf(lo) < alpha/2; lo++ {
		below += pmf(lo)
	}
	hi = n
	for above := 0.0; hi > 0 && above+pmf(hi) < alpha/2; hi-- {
		above += pmf(hi)
	}
	return lo, hi
}

// TestBinomialBounds holds binomialBounds to tails summed exactly
// (Python's math.comb): 2 to 8 of 10 fair coins at 5%.
func TestBinomialBounds(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		p      float64
		alpha  float64
		lo, hi int
	}{
		{"ten fair coins at 5%", 10, 0.5, 0.05, 2, 8},
		{"the split at one in a million", 400, 0.75, 1e-6, 256, 340},
		{"a rare event, no lower bound", 100, 0.01, 1e-3, 0, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if lo, hi := binomialBounds(tt.n, tt.p, tt.alpha); lo != tt.lo || hi != tt.hi {
				t.Errorf("binomialBounds(%d, %v, %v) = %d, %d; want %d, %d", tt.n, tt.p, tt.alpha, lo, hi, tt.lo, tt.hi)
			}
		})
	}
}

// testRetries sends requests whose first attempt the flaky backend fails:
// the VirtualService's retry recovers each one, at the second attempt.
func testRetries(t *testing.T, m *mesh, wpLog *syncbuf.Buffer, attempts func(id string) int) {
	for i := range 3 {
		id := fmt.Sprintf("retry-%d", i)
		path := "/flaky/" + id
		status, body := requestWith(t, m, "client", http.MethodGet, "http://"+flakyVIP+path, map[string]string{"x-e2e-request": id})
		if want := id + " served at attempt 2"; status != http.StatusOK || body != want {
			t.Fatalf("GET %s: %d %q, want 200 %q", path, status, body, want)
		}
		if n := attempts(id); n != 2 {
			t.Errorf("the backend saw %s %d times, want 2 (a 503, then the retry)", id, n)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == path })
		if e.Attempts != 2 || e.Status != http.StatusOK || e.Route != "shop/flaky#0" {
			t.Errorf("waypoint access log = %+v, want 2 attempts, 200, route shop/flaky#0", e)
		}
	}
}

// testDefaultRetries sends requests to a service no route names, whose
// backend answers each first attempt with gRPC UNAVAILABLE: Istio's
// default retry policy recovers each one at the second attempt.
func testDefaultRetries(t *testing.T, m *mesh, wpLog *syncbuf.Buffer, attempts func(id string) int) {
	for i := range 3 {
		id := fmt.Sprintf("default-retry-%d", i)
		path := "/unavailable/" + id
		status, body := requestWith(t, m, "client", http.MethodGet, "http://"+unavailableVIP+path, map[string]string{"x-e2e-request": id})
		if want := id + " served at attempt 2"; status != http.StatusOK || body != want {
			t.Fatalf("GET %s: %d %q, want 200 %q", path, status, body, want)
		}
		if n := attempts(id); n != 2 {
			t.Errorf("the backend saw %s %d times, want 2 (UNAVAILABLE, then the retry)", id, n)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == path })
		if e.Attempts != 2 || e.Status != http.StatusOK || e.Route != "" {
			t.Errorf("waypoint access log = %+v, want 2 attempts, 200, no route", e)
		}
	}
}

// testPolicyOnKeptAlive loads a policy that denies /keepalive into the
// waypoint's bundle between two requests on one kept-alive connection:
// the first is allowed, the second denied.
func testPolicyOnKeptAlive(t *testing.T, m *mesh, wpLog *syncbuf.Buffer, bundle, denyKeepalive string) {
	client := keptAliveClient(t, m, "client")
	url := "http://" + webVIP + "/keepalive"
	first, status, body := getOnConn(t, client, url)
	if status != http.StatusOK {
		t.Fatalf("GET /keepalive before the change: %d %q, want 200", status, body)
	}
	wp := m.Waypoints["waypoint"]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gen, err := wp.PolicyGeneration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, filepath.Join(bundle, "policy.rego"), denyKeepalive)
	if err := wp.WaitPolicyAfter(ctx, gen); err != nil {
		t.Fatal(err)
	}
	second, status, body := getOnConn(t, client, url)
	if status != http.StatusForbidden || body != "RBAC: access denied" {
		t.Fatalf("GET /keepalive after the change: %d %q, want 403", status, body)
	}
	if !second.Reused || second.Conn.LocalAddr().String() != first.Conn.LocalAddr().String() {
		t.Errorf("the second request went on %s (reused %v), want the first's kept-alive connection %s",
			second.Conn.LocalAddr(), second.Reused, first.Conn.LocalAddr())
	}
	e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/keepalive" && e.Decision == "deny" })
	if e.Rule != "no-keepalive" {
		t.Errorf("waypoint access log = %+v, want a deny by no-keepalive", e)
	}
}

// testWaypointRestart sends GETs one after another on kept-alive
// connections while the waypoint process is restarted (SIGTERM: it
// closes its idle keep-alives and drains; then a new process). The
// client retries an idempotent GET that fails on a connection error, as
// Go's transport and most clients do, and every request gets its 200.
func testWaypointRestart(t *testing.T, m *mesh) {
	client := keptAliveClient(t, m, "client")
	type result struct {
		err     error
		retries int
	}
	results := make(chan result)
	testgo.Go(t, func(ctx context.Context) {
		for i := 0; ; i++ {
			path := fmt.Sprintf("/restart/%d", i)
			retries, err := getRetrying(ctx, client, "http://"+webVIP+path, "GET "+path+" served by server")
			if ctx.Err() != nil {
				return
			}
			select {
			case results <- result{err, retries}:
			case <-ctx.Done():
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	retried := 0
	await := func(n int, when string) {
		t.Helper()
		for range n {
			select {
			case r := <-results:
				if r.err != nil {
					t.Fatalf("%s: %v", when, r.err)
				}
				retried += r.retries
			case <-ctx.Done():
				t.Fatalf("%s: no answer: %v", when, ctx.Err())
			}
		}
	}
	await(10, "before the restart")
	restarted := make(chan error, 1)
	go func() { restarted <- m.RestartWaypoint(ctx, "waypoint") }()
	// Requests go on while the old process drains and the new one starts.
	for done := false; !done; {
		select {
		case err := <-restarted:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case r := <-results:
			if r.err != nil {
				t.Fatalf("during the restart: %v", r.err)
			}
			retried += r.retries
		}
	}
	await(10, "after the restart")
	t.Logf("retried %d times on connection errors across the restart", retried)
	// The loop ends with the subtest (its context), and the subtest waits
	// for it.
}

// getRetrying GETs url until it answers, retrying on connection errors
// (an idempotent request may be sent again) with a short backoff until
// ctx ends; any answer but 200 with want is an error. It returns how many
// times it retried.
func getRetrying(ctx context.Context, client *http.Client, url, want string) (retries int, err error) {
	for ; ; retries++ {
		status, body, err := tryGet(ctx, client, url)
		if err == nil {
			if status != http.StatusOK || body != want {
				return retries, fmt.Errorf("GET %s: %d %q, want 200 %q", url, status, body, want)
			}
			return retries, nil
		}
		select {
		case <-ctx.Done():
			return retries, fmt.Errorf("GET %s: gave up after %d retries: %w", url, retries, err)
		case <-time.After(time.Duration(min(retries+1, 10)) * 20 * time.Millisecond):
		}
	}
}

func tryGet(ctx context.Context, client *http.Client, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// keptAliveClient is an HTTP client in the pod that keeps its
// connections alive between requests.
func keptAliveClient(t *testing.T, m *mesh, pod string) *http.Client {
	t.Helper()
	transport := &http.Transport{MaxIdleConnsPerHost: 4, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return localmesh.Dial(m.Pods[pod], addr, 5*time.Second)
	}}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: transport}
}

// getWith makes one request with client and reads the whole answer.
func getWith(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	status, body, err := tryGet(t.Context(), client, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return status, body
}

// getOnConn is getWith, telling which connection the request went on.
func getOnConn(t *testing.T, client *http.Client, url string) (httptrace.GotConnInfo, int, string) {
	t.Helper()
	var conn httptrace.GotConnInfo
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{GotConn: func(c httptrace.GotConnInfo) { conn = c }})
	status, body, err := tryGet(ctx, client, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if conn.Conn == nil {
		t.Fatalf("GET %s: no connection traced", url)
	}
	return conn, status, body
}

// serveHandler serves h in the pod on port until the test ends.
func serveHandler(t *testing.T, m *mesh, pod string, port int, h http.Handler) {
	t.Helper()
	l, err := localmesh.Listen(m.Pods[pod], fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: h}
	t.Cleanup(func() { srv.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { srv.Close() })()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serving %s:%d: %v", pod, port, err)
		}
	})
}

// replaceFile writes data to path at once (a rename), so that a poller
// never reads half of it.
func replaceFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
