package ztunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/hbone"
)

// withoutTimes blanks what differs from run to run: times, and the
// source port of a tunnel (a connection ztunnel's pool opened).
func withoutTimes(e AccessEntry) AccessEntry {
	e.Time, e.DurationMS = time.Time{}, 0
	if e.Direction == inbound && e.SourceID != "" && strings.HasPrefix(e.Source, "127.0.0.1:") {
		e.Source = "127.0.0.1:*"
	}
	return e
}

// byDirection splits a connection's two lines (source side, destination
// side).
func byDirection(t *testing.T, es []AccessEntry) (out, in AccessEntry) {
	t.Helper()
	for _, e := range es {
		switch e.Direction {
		case outbound:
			out = e
		case inbound:
			in = e
		}
	}
	if out.Direction == "" || in.Direction == "" {
		t.Fatalf("want one outbound and one inbound line, got %+v", es)
	}
	return out, in
}

// labels renders Istio's TCP labels as series() does.
func labels(reporter, srcWL, srcNS, srcID, dstWL, dstNS, dstID, svc string, flag Flag, security string) string {
	return strings.Join([]string{
		"connection_security_policy=" + security,
		"destination_principal=" + dstID, "destination_service=" + svc,
		"destination_workload=" + dstWL, "destination_workload_namespace=" + dstNS,
		"reporter=" + reporter, "request_protocol=tcp", "response_flags=" + string(flag),
		"source_principal=" + srcID, "source_workload=" + srcWL, "source_workload_namespace=" + srcNS,
	}, ",")
}

func checkSeries(t *testing.T, m *pathMesh, name string, want map[string]float64) {
	t.Helper()
	got := m.series(name)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s{%s} = %v, want %v", name, k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s{%s} = %v, not expected", name, k, v)
		}
	}
}

// An allowed connection goes from the client pod through its ztunnel's
// outbound listener, an HBONE tunnel in mutual TLS with the client's SVID,
// the api pod's HBONE server and L4 policy, to the api's server and back;
// each side reports it once, with Istio's labels and the bytes it moved.
func TestOutboundAllowed(t *testing.T) {
	for _, tc := range []struct {
		name, dst, service string
	}{
		{"to the workload", apiApp, ""},
		{"to the service", "10.96.0.2:80", "api.shop.svc.cluster.local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newPathMesh(t)
			c := m.dial(t, "client", tc.dst)
			if got, err := roundTrip(c, "hello"); err != nil || got != "hheelllloo" {
				t.Fatalf("round trip: %q, %v", got, err)
			}
			c.Close()
			out, in := byDirection(t, m.waitEntries(t, 2))
			wantOut := AccessEntry{
				Direction: "outbound", Source: c.LocalAddr().String(), Destination: tc.dst,
				SourceID: webID, DestinationID: apiID, SourceWL: "client", DestinationWL: "api-1", Namespace: "shop",
				Hbone: "10.0.0.2:15008", Decision: "allow", Flags: FlagNone, Sent: 10, Received: 5,
			}
			if got := withoutTimes(out); got != wantOut {
				t.Errorf("outbound line\n got %+v\nwant %+v", got, wantOut)
			}
			wantIn := AccessEntry{
				Direction: "inbound", Source: "127.0.0.1:*", Destination: apiApp,
				SourceID: webID, DestinationID: apiID, DestinationWL: "api-1", Namespace: "shop",
				Decision: "allow", Policy: "shop/api-allow", Rule: "0", Reason: "allowed by ALLOW policy",
				Flags: FlagNone, Sent: 10, Received: 5,
			}
			if got := withoutTimes(in); got != wantIn {
				t.Errorf("inbound line\n got %+v\nwant %+v", got, wantIn)
			}
			svc := "unknown"
			if tc.service != "" {
				svc = tc.service
			}
			want := map[string]float64{
				labels("source", "client", "shop", webID, "api-1", "shop", apiID, svc, FlagNone, "mutual_tls"):                1,
				labels("destination", "unknown", "unknown", webID, "api-1", "shop", apiID, "unknown", FlagNone, "mutual_tls"): 1,
			}
			for _, name := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
				checkSeries(t, m, name, want)
			}
			for k := range want {
				want[k] = 10
			}
			checkSeries(t, m, "istio_tcp_sent_bytes_total", want)
			for k := range want {
				want[k] = 5
			}
			checkSeries(t, m, "istio_tcp_received_bytes_total", want)
		})
	}
}

// A connection the destination's policy denies is refused at both ends,
// and each end reports it exactly once: one access-log line and one
// count per metric, with the DENY flag; the destination's line names the
// policy and rule, the source's the 401 it got.
func TestDenyReportedOnce(t *testing.T) {
	m := newPathMesh(t)
	c := m.dial(t, "intruder", apiApp)
	if got, err := roundTrip(c, "hello"); err == nil {
		t.Fatalf("the intruder got through: %q", got)
	}
	out, in := byDirection(t, m.settled(t, 2))
	if !strings.Contains(out.Error, hbone.ErrDenied.Error()) {
		t.Errorf("outbound error %q, want the peer's 401 (%q)", out.Error, hbone.ErrDenied)
	}
	out.Error = ""
	wantOut := AccessEntry{
		Direction: "outbound", Source: c.LocalAddr().String(), Destination: apiApp,
		SourceID: "spiffe://cluster.local/ns/shop/sa/intruder", DestinationID: apiID, SourceWL: "intruder",
		DestinationWL: "api-1", Namespace: "shop", Hbone: "10.0.0.2:15008", Decision: "deny", Flags: FlagDenied,
	}
	if got := withoutTimes(out); got != wantOut {
		t.Errorf("outbound line\n got %+v\nwant %+v", got, wantOut)
	}
	wantIn := AccessEntry{
		Direction: "inbound", Source: "127.0.0.1:*", Destination: apiApp,
		SourceID: "spiffe://cluster.local/ns/shop/sa/intruder", DestinationID: apiID, DestinationWL: "api-1", Namespace: "shop",
		Decision: "deny", Reason: "no ALLOW policy matched; selecting the destination: shop/api-allow", Flags: FlagDenied,
	}
	if got := withoutTimes(in); got != wantIn {
		t.Errorf("inbound line\n got %+v\nwant %+v", got, wantIn)
	}
	intruder := "spiffe://cluster.local/ns/shop/sa/intruder"
	want := map[string]float64{
		labels("source", "intruder", "shop", intruder, "api-1", "shop", apiID, "unknown", FlagDenied, "mutual_tls"):        1,
		labels("destination", "unknown", "unknown", intruder, "api-1", "shop", apiID, "unknown", FlagDenied, "mutual_tls"): 1,
	}
	checkSeries(t, m, "istio_tcp_connections_opened_total", want)
	checkSeries(t, m, "istio_tcp_connections_closed_total", want)
	if sent := m.sum("istio_tcp_sent_bytes_total", nil) + m.sum("istio_tcp_received_bytes_total", nil); sent != 0 {
		t.Errorf("%v bytes counted for a refused connection", sent)
	}
}

// A connection addressed to one of ztunnel's own ports is refused with
// LOOP before any route or policy, whether a pod dials it or a peer asks
// for it in a CONNECT, and only the refusing side reports it.
func TestLoopRefused(t *testing.T) {
	for _, dst := range []string{"127.0.0.1:15001", "10.0.0.2:15008", "10.0.0.2:15020"} {
		t.Run("outbound "+dst, func(t *testing.T) {
			m := newPathMesh(t)
			c := m.dial(t, "client", dst)
			if got, err := roundTrip(c, "hello"); err == nil {
				t.Fatalf("a loop got through: %q", got)
			}
			e := withoutTimes(m.settled(t, 1)[0])
			if !strings.Contains(e.Error, "one of ztunnel's own ports") {
				t.Errorf("error %q, want the loop named", e.Error)
			}
			e.Error = ""
			want := AccessEntry{Direction: "outbound", Source: c.LocalAddr().String(), Destination: dst, SourceID: webID, SourceWL: "client", Flags: FlagLoop}
			if e != want {
				t.Errorf("line\n got %+v\nwant %+v", e, want)
			}
			checkSeries(t, m, "istio_tcp_connections_opened_total", map[string]float64{
				labels("source", "client", "shop", webID, "unknown", "unknown", "unknown", "unknown", FlagLoop, "none"): 1,
			})
		})
	}
	t.Run("CONNECT to a pod's 15001", func(t *testing.T) {
		m := newPathMesh(t)
		pool, err := hbone.NewPool(hbone.PoolConfig{Bundle: m.bundle, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return m.net.pod(netip.MustParseAddr("10.0.0.3")).Dial(ctx, addr)
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		intruder := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/intruder")
		_, err = pool.Dial(t.Context(), hbone.Request{
			Source: svidOf{m.idsHeld, intruder}, Peer: spiffeid.RequireFromString(apiID),
			Addr: netip.MustParseAddrPort("10.0.0.2:15008"), Authority: netip.MustParseAddrPort("10.0.0.2:15001"),
		})
		if !errors.Is(err, hbone.ErrBadRequest) {
			t.Fatalf("CONNECT 10.0.0.2:15001: %v, want %v (400)", err, hbone.ErrBadRequest)
		}
		e := withoutTimes(m.settled(t, 1)[0])
		if !strings.Contains(e.Error, "one of ztunnel's own ports") {
			t.Errorf("error %q, want the loop named", e.Error)
		}
		e.Error = ""
		want := AccessEntry{Direction: "inbound", Source: "127.0.0.1:*", Destination: "10.0.0.2:15001", SourceID: intruder.String(),
			DestinationID: apiID, DestinationWL: "api-1", Namespace: "shop", Flags: FlagLoop}
		if e != want {
			t.Errorf("line\n got %+v\nwant %+v", e, want)
		}
	})
}

// A pod without an SVID gets no tunnel, and nothing in plaintext either:
// the destination never sees it.
func TestNoSVIDRefused(t *testing.T) {
	m := newPathMesh(t)
	c := m.dial(t, "orphan", apiApp)
	if got, err := roundTrip(c, "hello"); err == nil {
		t.Fatalf("a pod without an SVID got through: %q", got)
	}
	e := withoutTimes(m.settled(t, 1)[0])
	if !strings.Contains(e.Error, hbone.ErrNoSVID.Error()) {
		t.Errorf("error %q, want %q", e.Error, hbone.ErrNoSVID)
	}
	if e.Direction != outbound || e.Flags != FlagNoSVID || e.Decision != "" || e.SourceID != "spiffe://cluster.local/ns/shop/sa/orphan" {
		t.Errorf("line %+v, want an outbound NO_SVID refusal of the orphan", e)
	}
}

// Plaintext from outside the mesh to a STRICT namespace is refused on
// 15006 by the PeerAuthentication, which the line names.
func TestPlaintextStrict(t *testing.T) {
	m := newPathMesh(t)
	c := m.dialPlaintext(t, "api-1", apiApp)
	if got, err := roundTrip(c, "hello"); err == nil {
		t.Fatalf("plaintext got through: %q", got)
	}
	e := withoutTimes(m.settled(t, 1)[0])
	want := AccessEntry{
		Direction: "inbound", Source: c.LocalAddr().String(), Destination: apiApp, DestinationID: apiID,
		DestinationWL: "api-1", Namespace: "shop", Decision: "deny", Policy: "shop/strict", Rule: "mtls",
		Reason: "STRICT mTLS: plaintext refused by PeerAuthentication shop/strict", Flags: FlagDenied,
	}
	if e != want {
		t.Errorf("line\n got %+v\nwant %+v", e, want)
	}
	checkSeries(t, m, "istio_tcp_connections_opened_total", map[string]float64{
		labels("destination", "unknown", "unknown", "unknown", "api-1", "shop", apiID, "unknown", FlagDenied, "none"): 1,
	})
}

// A destination outside the mesh is reached in plaintext when policy
// allows it; a denied one is refused with the deciding policy named; an
// allowed one is closed when new policy denies it.
func TestPassthrough(t *testing.T) {
	m := newPathMesh(t)
	denied := m.dial(t, "client", mailHost)
	if got, err := roundTrip(denied, "HELO"); err == nil {
		t.Fatalf("mail got through: %q", got)
	}
	e := withoutTimes(m.waitEntries(t, 1)[0])
	want := AccessEntry{
		Direction: "outbound", Source: denied.LocalAddr().String(), Destination: mailHost, SourceID: webID, SourceWL: "client",
		Decision: "deny", Policy: "istio-system/no-mail", Rule: "0", Reason: "denied by DENY policy", Flags: FlagDenied,
	}
	if e != want {
		t.Errorf("denied line\n got %+v\nwant %+v", e, want)
	}

	c := m.dial(t, "client", outside)
	if got, err := roundTrip(c, "hello"); err != nil || got != "hheelllloo" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	checkSeries(t, m, "istio_tcp_connections_opened_total", map[string]float64{
		labels("source", "client", "shop", webID, "unknown", "unknown", "unknown", "unknown", FlagDenied, "none"): 1,
		labels("source", "client", "shop", webID, "unknown", "unknown", "unknown", "unknown", FlagNone, "none"):   1,
	})
	m.loadIstio(t, pathPolicies+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-web, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["80"]}}]
`)
	if n := m.z.tracker.recheck(t.Context(), m.engine, m.z.State(), m.z.log); n != 1 {
		t.Fatalf("re-check closed %d connections, want the passthrough", n)
	}
	e = withoutTimes(m.waitEntries(t, 2)[1])
	want = AccessEntry{
		Direction: "outbound", Source: c.LocalAddr().String(), Destination: outside, SourceID: webID, SourceWL: "client",
		Decision: "allow", Reason: "no ALLOW policy selects the destination", Flags: FlagPolicyClose, Sent: 10, Received: 5,
	}
	if e != want {
		t.Errorf("closed line\n got %+v\nwant %+v", e, want)
	}
}
