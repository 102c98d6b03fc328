package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// A connection addressed to one of ztunnel's own ports would be captured
// again and re-sent under the pod's identity until the node runs out of
// descriptors. Each way in is refused with the LOOP flag, and the process
// holds as many descriptors afterwards as before. The frontend is the
// victim: no policy selects it, so nothing else would stop the loop.
func TestOwnPortsAreRefused(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	victim := m.Pods["frontend"]
	client := m.hboneClient(t, "intruder")
	before := openDescriptors(t)

	t.Run("the pod dials ztunnel's outbound listener on loopback", func(t *testing.T) {
		since := len(m.accessEntries(t))
		promptlyRefused(t, victim, "127.0.0.1:15001")
		m.loopLogged(t, since, "outbound", "127.0.0.1:15001")
	})
	t.Run("a peer asks for the pod's outbound listener in a CONNECT", func(t *testing.T) {
		since := len(m.accessEntries(t))
		target := fmt.Sprintf("%s:15001", victim.IP)
		_, err := client.connect(t, m, "frontend", target, netip.AddrPort{})
		if !errors.Is(err, hbone.ErrBadRequest) {
			t.Errorf("CONNECT %s: %v, want 400 (%v)", target, err, hbone.ErrBadRequest)
		}
		m.loopLogged(t, since, "inbound", target)
	})
	t.Run("a pod outside the mesh dials the pod's outbound listener in plaintext", func(t *testing.T) {
		since := len(m.accessEntries(t))
		target := fmt.Sprintf("%s:15001", victim.IP)
		promptlyRefused(t, m.Pods["legacy"], target)
		m.loopLogged(t, since, "inbound", target)
	})
	t.Run("a mesh pod dials another pod's admin port", func(t *testing.T) {
		since := len(m.accessEntries(t))
		target := fmt.Sprintf("%s:15000", m.Pods["api"].IP)
		promptlyRefused(t, victim, target)
		m.loopLogged(t, since, "outbound", target)
	})
	// A loop grows by thousands of descriptors a second; what the attempts
	// themselves left (a pooled HBONE connection) is a handful.
	if after := openDescriptors(t); after > before+10 {
		t.Errorf("open descriptors went from %d to %d", before, after)
	}
}

// A Forwarded header is the original client's address only when a waypoint
// sends it: from any other peer it is ignored, so source.ip stays the
// tunnel's socket peer and address rules hold. From a waypoint it fills
// source.remote_ip, never source.ip. The frontend plays the api's
// waypoint here; the intruder forges.
func TestForwardedIsTrustedFromWaypointsOnly(t *testing.T) {
	m := startMesh(t, []string{writePolicy(t, forwardedPolicy)}, false)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)
	m.setWaypoint(t, "api", "shop/frontend")
	trusted := netip.MustParseAddrPort("198.51.100.9:4000") // what the policy admits as source.ip

	t.Run("a forged header from a workload changes nothing", func(t *testing.T) {
		since := len(m.accessEntries(t))
		_, err := m.hboneClient(t, "intruder").connect(t, m, "api", target, trusted)
		if !errors.Is(err, hbone.ErrDenied) {
			t.Fatalf("CONNECT with Forwarded for=%s: %v, want 401", trusted, err)
		}
		e := m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool { return e.Direction == "inbound" })
		if !strings.HasPrefix(e.Source, m.Pods["intruder"].IP.String()+":") || e.Decision != "deny" {
			t.Errorf("inbound entry %+v: want the intruder's own address as the source, denied", e)
		}
	})
	t.Run("a waypoint's header fills remote_ip", func(t *testing.T) {
		since := len(m.accessEntries(t))
		original := netip.MustParseAddrPort("192.0.2.7:5000")
		s, err := m.hboneClient(t, "frontend").connect(t, m, "api", target, original)
		if err != nil {
			t.Fatalf("the waypoint's CONNECT for %s: %v", original, err)
		}
		if got, err := roundTrip(s, "via waypoint"); err != nil || got != "via waypoint" {
			t.Errorf("echo through the waypoint's tunnel: %q, %v", got, err)
		}
		s.Close()
		e := m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool { return e.Direction == "inbound" })
		if e.Decision != "allow" || e.Rule != "remote-from-waypoint" {
			t.Errorf("inbound entry %+v: want allowed by rule remote-from-waypoint", e)
		}
		if !strings.HasPrefix(e.Source, m.Pods["frontend"].IP.String()+":") {
			t.Errorf("source %s, want the waypoint's socket address, not the forwarded one", e.Source)
		}
	})
	t.Run("a waypoint's header never sets source.ip", func(t *testing.T) {
		_, err := m.hboneClient(t, "frontend").connect(t, m, "api", target, trusted)
		if !errors.Is(err, hbone.ErrDenied) {
			t.Fatalf("CONNECT with Forwarded for=%s: %v, want 401: only remote_ip carries it", trusted, err)
		}
	})
}

// forwardedPolicy admits the api's callers by address: a source.ip that no
// pod has (only a believed forgery could match it), or a client from
// 192.0.2.0/24 that a waypoint forwarded (source.remote_ip).
const forwardedPolicy = `package mesh.policies.e2e.forwarded

allow_scope contains {"policy": "e2e/forwarded"} if input.destination.labels.app == "api"

allow contains {"policy": "e2e/forwarded", "rule": "trusted-address"} if {
	input.destination.labels.app == "api"
	input.source.ip == "198.51.100.9"
}

allow contains {"policy": "e2e/forwarded", "rule": "remote-from-waypoint"} if {
	input.destination.labels.app == "api"
	net.cidr_contains("192.0.2.0/24", input.source.remote_ip)
}
`

// setWaypoint makes ref ("<namespace>/<name>") the waypoint of pod name in
// every ztunnel's state.
func (m *mesh) setWaypoint(t *testing.T, name, ref string) {
	t.Helper()
	m.editWorkload(t, name, func(w *state.Workload) { w.Waypoint = ref })
}

// hboneClient is a raw HBONE client in pod name's network namespace (its
// sockets marked, so not captured), presenting the pod's SVID.
type hboneClient struct {
	pool *hbone.Pool
	spec localmesh.PodSpec
}

func (m *mesh) hboneClient(t *testing.T, name string) *hboneClient {
	t.Helper()
	spec, ok := m.Spec(name)
	if !ok {
		t.Fatalf("no pod %s", name)
	}
	bundle, err := m.TrustBundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ns, err := capture.OpenNetns(m.Pods[name].Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	pool, err := hbone.NewPool(hbone.PoolConfig{
		Bundle:      bundle,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return ns.Dial(ctx, addr) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return &hboneClient{pool: pool, spec: spec}
}

// connect opens a tunnel to pod to's ztunnel for authority, with the
// Forwarded address given (none when zero).
func (c *hboneClient) connect(t *testing.T, m *mesh, to, authority string, fwd netip.AddrPort) (*hbone.Stream, error) {
	t.Helper()
	svid, err := m.SVID(c.spec)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := m.Spec(to)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.pool.Dial(ctx, hbone.Request{
		Source: svid, Peer: m.Identity(spec),
		Addr:      netip.AddrPortFrom(m.Pods[to].IP, 15008),
		Authority: netip.MustParseAddrPort(authority), Forwarded: fwd,
	})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// loopLogged waits for the entry of a refused loop to dst among those
// after the first since.
func (m *mesh) loopLogged(t *testing.T, since int, direction, dst string) {
	t.Helper()
	e := m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool {
		return e.Direction == direction && e.Destination == dst
	})
	if e.Flags != ztunnel.FlagLoop || !strings.Contains(e.Error, "one of ztunnel's own ports") {
		t.Errorf("%s entry for %s: flags %q error %q, want %s and the reason", direction, dst, e.Flags, e.Error, ztunnel.FlagLoop)
	}
}

func openDescriptors(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}
