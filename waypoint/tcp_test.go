package waypoint

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Connections relayed as TCP are counted in Istio's TCP metrics with
// reporter waypoint: opened when the upstream tunnel opens, closed with
// the bytes each way when they end; a refused one is opened and closed
// at once, with its flag and no bytes.
func TestTCPMetrics(t *testing.T) {
	m := newTestMesh(t)
	const sent = "three bytes and then some" // from the client
	for range 2 {
		s, err := m.dial(t.Context(), netip.AddrPortFrom(webVIP, 7001))
		if err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(greeting))
		if _, err := io.ReadFull(s, got); err != nil || string(got) != greeting {
			t.Fatalf("greeting through the waypoint: %q, %v", got, err)
		}
		if _, err := io.WriteString(s, sent); err != nil {
			t.Fatal(err)
		}
		// End cleanly: our end first, then the server's (a Close alone
		// resets the stream, which may drop what is still in flight).
		if err := s.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(s); err != nil || len(rest) != 0 {
			t.Fatalf("after the greeting: %q, %v; want the server's end", rest, err)
		}
		s.Close()
	}
	waitTCP(t, m, 2)
	want := map[string]string{
		"reporter": "waypoint", "source_principal": clientIDText, // the test client comes from loopback, no workload of the state:
		"source_workload": "unknown", "source_workload_namespace": "unknown",
		"destination_workload": "web-1", "destination_workload_namespace": "shop", "destination_principal": "spiffe://cluster.local/ns/shop/sa/web",
		"destination_service": "web.shop.svc.cluster.local", "destination_service_name": "web", "destination_service_namespace": "shop",
		"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
	}
	for name, value := range map[string]float64{
		"istio_tcp_connections_opened_total": 2,
		"istio_tcp_connections_closed_total": 2,
		"istio_tcp_sent_bytes_total":         2 * float64(len(greeting)),
		"istio_tcp_received_bytes_total":     2 * float64(len(sent)),
	} {
		if got := metricSum(t, m, name, want); got != value {
			t.Errorf("%s%v = %v, want %v", name, want, got, value)
		}
		if n := len(series(t, m, name, nil)); n != 1 {
			t.Errorf("%s: %d series, want 1", name, n)
		}
	}

	m.loadRego(t, `package mesh.policies.test.p

deny contains {"policy": "test/p", "rule": "no-tcp"} if input.layer == "l4"
`)
	s, err := m.dial(t.Context(), netip.AddrPortFrom(webVIP, 7001))
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(s); len(b) != 0 {
		t.Errorf("a denied connection read %q, want nothing", b)
	}
	s.Close()
	waitTCP(t, m, 3)
	denied := with(want, map[string]string{"response_flags": FlagDenied, "destination_workload": "unknown",
		"destination_workload_namespace": "unknown", "destination_principal": "unknown"})
	for name, value := range map[string]float64{
		"istio_tcp_connections_opened_total": 1,
		"istio_tcp_connections_closed_total": 1,
		"istio_tcp_sent_bytes_total":         0,
		"istio_tcp_received_bytes_total":     0,
	} {
		if got := metricSum(t, m, name, denied); got != value || len(series(t, m, name, denied)) != 1 {
			t.Errorf("%s%v = %v, want %v in one series", name, denied, got, value)
		}
	}
	if got := metricSum(t, m, "istio_requests_total", nil); got != 0 {
		t.Errorf("istio_requests_total = %v for relayed TCP, want 0", got)
	}
}

// waitTCP waits until the waypoint has logged n connections relayed (or
// refused) as TCP: it reports each as it ends, after the client has.
func waitTCP(t *testing.T, m *testMesh, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(m.access.String(), `"kind":"tcp"`) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the waypoint reported fewer than %d TCP connections:\n%s", n, m.access.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// AuthorizationPolicies with targetRefs to a Service the waypoint serves
// decide the connections it relays to it as TCP, with what ztunnel would
// enforce of their rules: web-allow's rule on ports lets the client
// through; another identity matches none of its rules (the others name
// HTTP attributes, which a relayed connection never matches) and is
// denied, naming the policy.
func TestTCPTargetRefs(t *testing.T) {
	m := newTestMesh(t)
	authority := netip.AddrPortFrom(webVIP, 7001)
	s, err := m.dial(t.Context(), authority)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(greeting))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != greeting {
		t.Fatalf("the client's connection: %q, %v; want the greeting", got, err)
	}
	s.Close()
	waitTCP(t, m, 1)
	if e := accessLines(t, m)[0]; e.Decision != "allow" || e.Policy != "shop/web-allow" || e.Rule != "2" {
		t.Errorf("access log %+v, want allowed by shop/web-allow rule 2", e)
	}

	other := m.ca.SVID(t, "/ns/b/sa/other")
	s, err = m.dialAs(t.Context(), other, authority, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(s); len(b) != 0 {
		t.Errorf("another identity's connection read %q, want nothing", b)
	}
	s.Close()
	waitTCP(t, m, 2)
	e := accessLines(t, m)[1]
	if e.Decision != "deny" || e.Policy != "" || !strings.Contains(e.Reason, "shop/web-allow") || e.Flags != FlagDenied ||
		e.SourceID != "spiffe://cluster.local/ns/b/sa/other" {
		t.Errorf("access log %+v, want a deny (no rule of shop/web-allow matched), flag DENY", e)
	}
}
