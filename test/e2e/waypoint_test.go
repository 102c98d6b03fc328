package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// waypointApp is a client on node-1, a server on node-2, and the shop's
// waypoint on node-1: the web service's traffic goes through it.
var waypointApp = []localmesh.PodSpec{
	{Name: "client", Node: "node-1", Namespace: "shop", ServiceAccount: "client"},
	{Name: "waypoint", Node: "node-1", Namespace: "shop", ServiceAccount: "waypoint", Waypoint: true},
	{Name: "server", Node: "node-2", Namespace: "shop", ServiceAccount: "server"},
}

// webVIP is the web service's address: in no pod's network, only in the
// mesh state, as a ClusterIP is.
const webVIP = "10.96.0.10"

// webPolicy is decided at both ends of the path. The waypoint decides
// each request (layer l7): nothing under /private. The server's ztunnel
// decides the tunnel from the waypoint (layer l4): the server takes only
// the waypoint, and only for the client it forwarded (%s, its address).
const webPolicy = `package mesh.policies.e2e.web

deny contains {"policy": "e2e/web", "rule": "no-private", "reason": "/private stays inside"} if {
	input.layer == "l7"
	startswith(input.request.url_path, "/private")
}

allow_scope contains {"policy": "e2e/server"} if {
	input.layer == "l4"
	input.destination.labels.app == "server"
}

allow contains {"policy": "e2e/server", "rule": "via-waypoint"} if {
	input.layer == "l4"
	input.source.principal == "spiffe://regomesh.test/ns/shop/sa/waypoint"
	input.source.remote_ip == %q
}
`

// TestWaypointFullPath sends HTTP from a pod to a service whose state
// names a waypoint: client -> ztunnel (node-1) -> waypoint (its own
// process, its own SVID from the Workload API) -> ztunnel (node-2) ->
// server. The waypoint decides each request, answers a deny as Envoy does
// and logs the rule; the server's ztunnel sees the waypoint's identity and
// the client's address it forwarded.
func TestWaypointFullPath(t *testing.T) {
	wpLog := &syncBuffer{}
	m := startMeshFrom(t, localmesh.Config{
		Pods:     waypointApp,
		Bundles:  []string{writePolicy(t, fmt.Sprintf(webPolicy, "unknown until the mesh is up"))},
		Services: []state.LocalService{webService()},
		// The waypoint loads the bundle at start; node-2's engine is
		// reloaded below with the client's address.
		WaypointBinary: buildCommand(t, "waypoint"), WaypointAccessLog: wpLog,
	}, false)
	client, server := m.Pods["client"], m.Pods["server"]
	m.loadPolicy(t, "node-2", fmt.Sprintf(webPolicy, client.IP))
	serveHTTP(t, m, "server", 8080)

	t.Run("allowed request", func(t *testing.T) {
		before := len(m.accessEntries(t))
		status, body := request(t, m, "client", http.MethodGet, "http://"+webVIP+"/orders/7")
		if status != http.StatusOK || body != "GET /orders/7 served by server" {
			t.Fatalf("GET /orders/7: %d %q, want 200 from the server", status, body)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/orders/7" })
		if e.Decision != "allow" || e.Status != http.StatusOK || e.SourceID != m.Identity(spec(t, m, "client")).String() ||
			!strings.HasPrefix(e.Upstream, server.IP.String()+":") {
			t.Errorf("waypoint access log = %+v, want an allow from the client, 200, upstream the server", e)
		}
		m.viaWaypoint(t, before)
		in := m.waitForEntrySince(t, before, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && strings.HasPrefix(e.Destination, server.IP.String()+":")
		})
		if in.Decision != "allow" || in.Policy != "e2e/server" || in.Rule != "via-waypoint" ||
			in.SourceID != m.Waypoints["waypoint"].ID.String() {
			t.Errorf("server's ztunnel logged %+v, want the waypoint allowed by e2e/server via-waypoint", in)
		}
	})

	t.Run("denied request", func(t *testing.T) {
		before := len(m.accessEntries(t))
		status, body := request(t, m, "client", http.MethodGet, "http://"+webVIP+"/private/keys")
		if status != http.StatusForbidden || body != "RBAC: access denied" {
			t.Fatalf("GET /private/keys: %d %q, want Envoy's 403", status, body)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/private/keys" })
		if e.Decision != "deny" || e.Policy != "e2e/web" || e.Rule != "no-private" || e.Status != http.StatusForbidden {
			t.Errorf("waypoint access log = %+v, want a deny by e2e/web no-private", e)
		}
		m.viaWaypoint(t, before)
	})

	t.Run("around the waypoint", func(t *testing.T) {
		// The client dials the server's own address: no waypoint on that
		// route, so the server's ztunnel sees the client itself, which its
		// policy does not take.
		in := m.refused(t, client, m.Identity(spec(t, m, "client")).String(), fmt.Sprintf("%s:8080", server.IP))
		if in.Policy != "" || !strings.Contains(in.Reason, "e2e/server") {
			t.Errorf("inbound deny = %+v, want no ALLOW of e2e/server matched", in)
		}
	})
}

// viaWaypoint waits for the client's ztunnel to log, after the first
// before entries, the end of a connection to the web service, and checks
// that it went to the waypoint's HBONE address with the client's SVID.
func (m *mesh) viaWaypoint(t *testing.T, before int) {
	t.Helper()
	out := m.waitForEntrySince(t, before, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "outbound" && e.Destination == webVIP+":80"
	})
	wp := m.Waypoints["waypoint"]
	if out.Hbone != wp.Pod.IP.String()+":15008" || out.DestinationID != wp.ID.String() ||
		out.SourceID != m.Identity(spec(t, m, "client")).String() {
		t.Errorf("client's ztunnel logged %+v, want a tunnel with the client's SVID to the waypoint %s at %s:15008", out, wp.ID, wp.Pod.IP)
	}
}

// webService is the web service: port 80 (HTTP) on the server's 8080,
// served through the shop's waypoint.
func webService() state.LocalService {
	return state.LocalService{
		Name: "web", Namespace: "shop", VIPs: []string{webVIP}, Selector: map[string]string{"app": "server"},
		Waypoint: "shop/waypoint", Ports: []state.ServicePort{{Port: 80, TargetPort: 8080, Name: "http"}},
	}
}

func spec(t *testing.T, m *mesh, name string) localmesh.PodSpec {
	t.Helper()
	s, ok := m.Spec(name)
	if !ok {
		t.Fatalf("no pod %s", name)
	}
	return s
}

// serveHTTP answers every request in the pod with its method and path.
func serveHTTP(t *testing.T, m *mesh, pod string, port int) {
	t.Helper()
	l, err := localmesh.Listen(m.Pods[pod], fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s served by %s", r.Method, r.URL.Path, pod)
	})}
	t.Cleanup(func() { srv.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { srv.Close() })()
		srv.Serve(l)
	})
}

// request makes one HTTP request from inside a pod, as its app would, on a
// connection of its own.
func request(t *testing.T, m *mesh, pod, method, url string) (int, string) {
	t.Helper()
	transport := &http.Transport{DisableKeepAlives: true, DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		return localmesh.Dial(m.Pods[pod], addr, 5*time.Second)
	}}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: transport}).Do(req)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", method, url, pod, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s from %s: body: %v", method, url, pod, err)
	}
	return resp.StatusCode, string(b)
}

// waypointEntry waits for the waypoint's access-log line that match
// accepts.
func waypointEntry(t *testing.T, log *syncBuffer, match func(waypoint.AccessEntry) bool) waypoint.AccessEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(bytes.NewReader(log.Bytes()))
		for sc.Scan() {
			var e waypoint.AccessEntry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("waypoint access log line %q: %v", sc.Text(), err)
			}
			if match(e) {
				return e
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no matching line in the waypoint's access log:\n%s", log.Bytes())
	return waypoint.AccessEntry{}
}
