package waypoint

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// benchPolicy is test/bench's waypoint policy: the client may GET the
// web service.
const benchPolicy = `package mesh.policies.test.p

allow_scope contains {"policy": "bench/http"} if input.destination.service == "web.shop.svc.cluster.local"

allow contains {"policy": "bench/http", "rule": "client-gets"} if {
	input.layer == "l7"
	input.destination.service == "web.shop.svc.cluster.local"
	input.source.principal == "spiffe://cluster.local/ns/a/sa/client"
	input.request.method == "GET"
}
`

// benchRequest is a GET as fortio's HTTP/1.1 client sends it in
// test/bench's HTTP phase, parsed as the waypoint's server parses it.
const benchRequest = "GET /public/echo?size=1024 HTTP/1.1\r\nHost: web.shop\r\nUser-Agent: fortio.org/fortio-1.75.3\r\n\r\n"

// BenchmarkDecision is the L7 decision of one request, as ServeHTTP
// makes it: the input's request (RequestOf), the input
// (state.Snapshot.WaypointInput) and authorize (the engine's Decide, with
// its metrics, and the exchange's record of it). It is what test/bench's
// HTTP phase counts as the decision's share of the waypoint's CPU, and
// allocates nothing but the request's headers map.
func BenchmarkDecision(b *testing.B) {
	m := newTestMesh(b)
	m.loadRego(b, benchPolicy)
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(benchRequest)))
	if err != nil {
		b.Fatal(err)
	}
	cl := &client{
		peer:   state.Peer{Principal: clientIDText, Addr: netip.MustParseAddrPort("10.1.0.5:40122")},
		target: state.Target{Addr: netip.AddrPortFrom(webVIP, 80)},
	}
	snap := m.wp.state.Load()
	cl.source, _ = snap.WorkloadByIP(cl.peer.Addr.Addr())
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		x := exchange{}
		in, _, err := cl.input(snap, RequestOf(r))
		if err != nil || !m.wp.authorize(ctx, in, &x) {
			b.Fatalf("denied: %v %+v", err, x.decision)
		}
	}
}

// BenchmarkRequest is one GET through the waypoint on a kept-alive
// HTTP/1.1 connection, end to end in this process: the client's tunnel,
// the waypoint (decision, endpoint, upstream tunnel), the endpoint's
// ztunnel and the backend's short answer. Profile it (-cpuprofile) to see
// the decision's share of the waypoint's functions.
func BenchmarkRequest(b *testing.B) {
	m := newTestMesh(b)
	m.loadRego(b, benchPolicy)
	m.wp.cfg.AccessLog = nil // as test/bench's waypoint runs
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	url := "http://web.shop/public/echo"
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequestWithContext(b.Context(), "GET", url, nil)
		req.Header.Set("User-Agent", "fortio.org/fortio-1.75.3")
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n != int64(len("hello /public/echo ")) {
			b.Fatalf("GET: %d, %d bytes", resp.StatusCode, n)
		}
	}
}
