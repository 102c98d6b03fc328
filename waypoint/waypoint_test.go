package waypoint

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// http1Client sends HTTP/1.1 over kept-alive tunnels to authority.
func (m *testMesh) http1Client(authority netip.AddrPort) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return m.dial(ctx, authority) },
	}}
}

// h2cClient sends HTTP/2 with prior knowledge, as gRPC clients do.
func (m *testMesh) h2cClient(authority netip.AddrPort) *http.Client {
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return m.dial(ctx, authority)
		},
	}}
}

type answer struct {
	status int
	body   string
	header http.Header
}

func do(t *testing.T, c *http.Client, method, url string, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader("data"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(body), resp.Header}
}

// Requests are decided one by one by the translated AuthorizationPolicies
// (path, method, header), over HTTP/1.1 and h2c; a deny is Envoy's 403.
func TestAuthorizeRequests(t *testing.T) {
	m := newTestMesh(t)
	svc := netip.AddrPortFrom(webVIP, 80)
	for name, c := range map[string]*http.Client{"HTTP/1.1": m.http1Client(svc), "h2c": m.h2cClient(svc)} {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				name, method, path string
				header             map[string]string
				allow              bool
			}{
				{name: "allowed path", method: "GET", path: "/public/a", allow: true},
				{name: "other path", method: "GET", path: "/private", allow: false},
				{name: "dot segments normalized", method: "GET", path: "/public/../private", allow: false},
				{name: "method", method: "POST", path: "/public/a", allow: false},
				{name: "denied header", method: "GET", path: "/public/a", header: map[string]string{"X-Block": "yes"}, allow: false},
				{name: "other header value", method: "GET", path: "/public/a", header: map[string]string{"X-Block": "no"}, allow: true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					a := do(t, c, tc.method, "http://web.shop"+tc.path, tc.header)
					if !tc.allow {
						if a.status != http.StatusForbidden || a.body != "RBAC: access denied" {
							t.Fatalf("got %d %q, want 403 %q", a.status, a.body, "RBAC: access denied")
						}
						return
					}
					wantProto := map[string]string{"HTTP/1.1": "HTTP/1.1", "h2c": "HTTP/2.0"}[name]
					if a.status != http.StatusOK || a.body != "hello "+tc.path+" data" || a.header.Get("X-Seen-Proto") != wantProto ||
						a.header.Get("X-Seen-Host") != "web.shop" {
						t.Fatalf("got %d %q %v, want the backend's answer over %s", a.status, a.body, a.header, wantProto)
					}
				})
			}
		})
	}
	m.upstream.mu.Lock()
	defer m.upstream.mu.Unlock()
	if len(m.upstream.peers) == 0 {
		t.Fatal("nothing reached the endpoint's ztunnel")
	}
	for i, p := range m.upstream.peers {
		if p != waypointID || m.upstream.authority[i] != netip.MustParseAddrPort("10.1.0.9:8080") ||
			m.upstream.forwarded[i].Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("upstream tunnel %d: peer %s authority %s forwarded %s; want the waypoint, 10.1.0.9:8080 and the client's address",
				i, p, m.upstream.authority[i], m.upstream.forwarded[i])
		}
	}
}

// A gRPC client's allowed call goes through over h2c; a denied one gets
// PERMISSION_DENIED.
func TestGRPC(t *testing.T) {
	m := newTestMesh(t)
	conn, err := grpc.NewClient("passthrough:///web.shop:9090",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return m.dial(ctx, netip.AddrPortFrom(webVIP, 9090))
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("allowed Check: %v, %v", resp, err)
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "RBAC: access denied" {
		t.Fatalf("denied Watch: %v, want PermissionDenied: RBAC: access denied", err)
	}
	waitRequests(t, m, 2)
	if got := metricSum(t, m, "istio_requests_total", map[string]string{"grpc_response_status": "7", "request_protocol": "grpc"}); got != 1 {
		t.Errorf("denied gRPC requests counted: %v, want 1", got)
	}
}

// A policy change applies to the next request on the same kept-alive
// connection: decisions are per request, not per connection.
func TestPolicyChangeOnKeptAliveConnection(t *testing.T) {
	m := newTestMesh(t)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	if a := do(t, c, "GET", "http://web.shop/public/x", nil); a.status != http.StatusOK {
		t.Fatalf("before: %d %q", a.status, a.body)
	}
	m.loadRego(t, `package mesh.policies.test.lockdown
deny contains {"policy": "test/lockdown", "rule": "everything"} if input.layer == "l7"
`)
	if a := do(t, c, "GET", "http://web.shop/public/x", nil); a.status != http.StatusForbidden {
		t.Fatalf("after the lockdown: %d %q, want 403", a.status, a.body)
	}
	if n := m.tunnels.Load(); n != 1 {
		t.Fatalf("the client opened %d tunnels; the test needs one kept-alive connection", n)
	}
	waitRequests(t, m, 2)
	lines := accessLines(t, m)
	last := lines[len(lines)-1]
	if last.Decision != "deny" || last.Policy != "test/lockdown" || last.Rule != "everything" || last.Status != 403 || last.Path != "/public/x" {
		t.Errorf("access log line = %+v, want the deny naming test/lockdown and its rule", last)
	}
}

// A state change applies to the next request on the same kept-alive
// connection too: the input a tunnel's requests share (source,
// destination) is built again for the new state.
func TestStateChangeOnKeptAliveConnection(t *testing.T) {
	m := newTestMesh(t)
	m.loadRego(t, `package mesh.policies.test.shoponly
allow_scope contains {"policy": "test/shop-only"} if input.layer == "l7"
allow contains {"policy": "test/shop-only", "rule": "shop"} if input.destination.namespace == "shop"
`)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	if a := do(t, c, "GET", "http://web.shop/public/x", nil); a.status != http.StatusOK {
		t.Fatalf("before: %d %q", a.status, a.body)
	}
	moved := strings.Replace(testState, "- name: web\n  namespace: shop\n", "- name: web\n  namespace: store\n", 1)
	if moved == testState {
		t.Fatal("the test state no longer declares the web service as this test expects")
	}
	snap, err := state.Decode([]byte(moved), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.wp.SetState(snap)
	if a := do(t, c, "GET", "http://web.shop/public/x", nil); a.status != http.StatusForbidden {
		t.Fatalf("after the service moved to another namespace: %d %q, want 403", a.status, a.body)
	}
	if n := m.tunnels.Load(); n != 1 {
		t.Fatalf("the client opened %d tunnels; the test needs one kept-alive connection", n)
	}
}

// An engine error denies: before any bundle is loaded, every request is
// refused.
func TestNoPolicyDenies(t *testing.T) {
	m := newTestMesh(t)
	engine := m.engine
	m.wp.cfg.Policy = failingPolicy{}
	defer func() { m.wp.cfg.Policy = engine }()
	a := do(t, m.http1Client(netip.AddrPortFrom(webVIP, 80)), "GET", "http://web.shop/public/x", nil)
	if a.status != http.StatusForbidden || a.body != DeniedBody {
		t.Fatalf("got %d %q, want 403", a.status, a.body)
	}
}

// A port that declares no protocol is sniffed: HTTP/1.1 is decided per
// request, other bytes are relayed as TCP.
func TestSniffedPorts(t *testing.T) {
	m := newTestMesh(t)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 8081))
	if a := do(t, c, "GET", "http://web.shop/private", nil); a.status != http.StatusForbidden {
		t.Fatalf("sniffed HTTP/1.1 to /private: %d, want 403", a.status)
	}
	if a := do(t, c, "GET", "http://web.shop/public/y", nil); a.status != http.StatusOK {
		t.Fatalf("sniffed HTTP/1.1 to /public/y: %d, want 200", a.status)
	}
	s, err := m.dial(t.Context(), netip.AddrPortFrom(webVIP, 7000))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	msg := "\x00\x01binary, not HTTP\n"
	if _, err := io.WriteString(s, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != msg {
		t.Fatalf("TCP echo through the waypoint: %q, %v", got, err)
	}
}

// Request metrics carry Istio's names and labels with reporter waypoint,
// and count the requests, their statuses and body sizes: on one kept-alive
// tunnel, which keeps the children its last request counted in, the
// statuses alternate.
func TestRequestMetrics(t *testing.T) {
	m := newTestMesh(t)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	do(t, c, "GET", "http://web.shop/public/a", nil)
	do(t, c, "GET", "http://web.shop/private", nil)
	do(t, c, "GET", "http://web.shop/public/b", nil)
	waitRequests(t, m, 3)
	if n := m.tunnels.Load(); n != 1 {
		t.Fatalf("the client opened %d tunnels; the test needs one kept-alive connection", n)
	}
	want := map[string]string{
		"reporter": "waypoint", "source_principal": clientIDText, "destination_service": "web.shop.svc.cluster.local",
		"destination_service_name": "web", "destination_service_namespace": "shop", "request_protocol": "http",
		"connection_security_policy": "mutual_tls",
	}
	ok := with(want, map[string]string{"response_code": "200", "destination_workload": "web-1", "destination_principal": "spiffe://cluster.local/ns/shop/sa/web"})
	denied := with(want, map[string]string{"response_code": "403", "response_flags": "DENY"})
	if got := metricSum(t, m, "istio_requests_total", ok); got != 2 {
		t.Errorf("istio_requests_total 200 = %v, want 2", got)
	}
	if got := metricSum(t, m, "istio_requests_total", denied); got != 1 {
		t.Errorf("istio_requests_total 403 = %v, want 1", got)
	}
	if got := metricSum(t, m, "istio_response_bytes", denied); got != float64(len(DeniedBody)) {
		t.Errorf("istio_response_bytes of the deny = %v, want %d", got, len(DeniedBody))
	}
	if got := metricSum(t, m, "istio_request_bytes", ok); got != 8 {
		t.Errorf("istio_request_bytes = %v, want 8 (two bodies of 4)", got)
	}
	if got := metricCount(t, m, "istio_request_duration_milliseconds", ok); got != 2 {
		t.Errorf("istio_request_duration_milliseconds count = %v, want 2", got)
	}
}

// The request's traceparent reaches the backend unchanged, and the access
// log line names it.
func TestTraceParentPropagated(t *testing.T) {
	m := newTestMesh(t)
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	a := do(t, m.http1Client(netip.AddrPortFrom(webVIP, 80)), "GET", "http://web.shop/public/t", map[string]string{"Traceparent": tp})
	if a.header.Get("X-Seen-Traceparent") != tp {
		t.Fatalf("backend saw traceparent %q, want %q", a.header.Get("X-Seen-Traceparent"), tp)
	}
	waitRequests(t, m, 1)
	if lines := accessLines(t, m); lines[len(lines)-1].TraceParent != tp {
		t.Errorf("access log: %+v", lines[len(lines)-1])
	}
}

type failingPolicy struct{}

func (failingPolicy) Decide(context.Context, policyInput) (policyDecision, error) {
	return policyDecision{}, errTestPolicy
}

// waitRequests waits until the waypoint has reported n requests: it
// reports each after its response has gone, so a client can be faster.
func waitRequests(t *testing.T, m *testMesh, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(m.access.String(), `"kind":"http"`) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the waypoint reported fewer than %d requests:\n%s", n, m.access.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func accessLines(t *testing.T, m *testMesh) []AccessEntry {
	t.Helper()
	var out []AccessEntry
	for line := range strings.Lines(m.access.String()) {
		var e AccessEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func with(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// metricSum adds the values (counters) or sums (histograms) of the series
// of name whose labels include want.
func metricSum(t *testing.T, m *testMesh, name string, want map[string]string) float64 {
	var sum float64
	for _, mt := range series(t, m, name, want) {
		if c := mt.GetCounter(); c != nil {
			sum += c.GetValue()
		}
		if h := mt.GetHistogram(); h != nil {
			sum += h.GetSampleSum()
		}
	}
	return sum
}

func metricCount(t *testing.T, m *testMesh, name string, want map[string]string) uint64 {
	var n uint64
	for _, mt := range series(t, m, name, want) {
		n += mt.GetHistogram().GetSampleCount()
	}
	return n
}

func series(t *testing.T, m *testMesh, name string, want map[string]string) []*dto.Metric {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.Metric
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			out = append(out, mt)
		}
	}
	return out
}

// The gRPC deny is trailers-only: HTTP 200 whose one HEADERS frame
// carries grpc-status 7, with no body and no trailers.
func TestGRPCDenyIsTrailersOnly(t *testing.T) {
	m := newTestMesh(t)
	c := m.h2cClient(netip.AddrPortFrom(webVIP, 9090))
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://web.shop/grpc.health.v1.Health/Watch", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "7" || resp.Header.Get("Grpc-Message") != DeniedBody ||
		len(body) != 0 || len(resp.Trailer) != 0 || resp.Header.Get("Content-Type") != "application/grpc" {
		t.Fatalf("got %d %v body %q trailers %v; want trailers-only grpc-status 7", resp.StatusCode, resp.Header, body, resp.Trailer)
	}
}

// A tunnel's kept children are used only for the label values they were
// resolved with: each field the values are made from, changed alone,
// resolves others.
func TestSeriesKeptPerLabelValues(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	snap, err := state.Decode([]byte(testState), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	web, _ := snap.WorkloadByIP(webIP)
	web2, _ := snap.WorkloadByIP(web2IP)
	var kept atomic.Pointer[requestSeries]
	base := func() *exchange {
		return &exchange{series: &kept, source: web, endpoint: web, status: 200, peer: state.Peer{Principal: clientIDText}}
	}
	first := m.seriesOf(base())
	if again := m.seriesOf(base()); again != first {
		t.Fatal("the same label values resolved the children again")
	}
	for name, change := range map[string]func(x *exchange){
		"status":      func(x *exchange) { x.status = 404 },
		"flags":       func(x *exchange) { x.flags = FlagDenied },
		"grpc":        func(x *exchange) { x.grpc = true },
		"grpc status": func(x *exchange) { x.grpcStatus = "7" },
		"principal":   func(x *exchange) { x.peer.Principal = "" },
		"source":      func(x *exchange) { x.source = web2 },
		"endpoint":    func(x *exchange) { x.endpoint = web2 },
		"service":     func(x *exchange) { x.target.Service = snap.Services[0] },
	} {
		x := base()
		change(x)
		if s := m.seriesOf(x); s.requests == first.requests {
			t.Errorf("with the %s changed, the request counter is the first request's", name)
		}
		m.seriesOf(base()) // back to the first values
	}
}
