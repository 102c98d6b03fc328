package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/regomesh/regomesh/internal/syncbuf"
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

deny contains {"policy": "e2e/web", "rule": "admins-only", "reason": "/admin needs the admin role"} if {
	input.layer == "l7"
	startswith(input.request.url_path, "/admin")
	not input.request.auth.claims.role == "admin"
}

deny contains {"policy": "e2e/web", "rule": "no-blue-team", "reason": "the blue team calls no gRPC"} if {
	input.layer == "l7"
	input.request.headers["x-team"] == "blue"
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

// denyKeepalive is added to webPolicy while a connection is kept alive.
const denyKeepalive = `
deny contains {"policy": "e2e/web", "rule": "no-keepalive", "reason": "loaded while the connection stayed open"} if {
	input.layer == "l7"
	input.request.url_path == "/keepalive"
}
`

// TestWaypointFullPath sends HTTP from a pod to a service whose state
// names a waypoint: client -> ztunnel (node-1) -> waypoint (its own
// process, its own SVID from the Workload API) -> ztunnel (node-2) ->
// server. The waypoint decides each request, answers a deny as Envoy does
// and logs the rule; the server's ztunnel sees the waypoint's identity and
// the client's address it forwarded.
func TestWaypointFullPath(t *testing.T) {
	wpLog := &syncbuf.Buffer{}
	issuer := newIssuer(t)
	wpBundle := writePolicy(t, fmt.Sprintf(webPolicy, "unknown until the mesh is up"))
	m := startMeshFrom(t, localmesh.Config{
		Pods:     waypointApp,
		Bundles:  []string{wpBundle},
		Services: append(routedServices(), webService()),
		// The waypoint loads the bundle at start; node-2's engine is
		// reloaded below with the client's address.
		WaypointBinary: buildCommand(t, "waypoint"), WaypointAccessLog: wpLog,
		WaypointFlags: []string{
			"--request-authentication", writeFile(t, "ra.yaml", fmt.Sprintf(webJWT, issuer.jwks(t))),
			"--routes", writeFile(t, "routes.yaml", webRoutes),
		},
	}, false)
	client, server := m.Pods["client"], m.Pods["server"]
	m.loadPolicy(t, "node-2", fmt.Sprintf(webPolicy, client.IP))
	serveHTTP(t, m, "server", 8080)
	serveGRPC(t, m, "server", 9090)
	attempts := serveRouted(t, m)

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

	t.Run("JWT claim", func(t *testing.T) {
		for _, tc := range []struct {
			name, token string
			status      int
			body        string
		}{
			{"admin role", issuer.token(t, "admin"), 200, "GET /admin/users served by server"},
			{"user role", issuer.token(t, "user"), 403, "RBAC: access denied"},
			{"no token", "", 403, "RBAC: access denied"},
			{"forged token", newIssuer(t).token(t, "admin"), 401, "Jwt verification fails"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				header := map[string]string{}
				if tc.token != "" {
					header["Authorization"] = "Bearer " + tc.token
				}
				status, body := requestWith(t, m, "client", http.MethodGet, "http://"+webVIP+"/admin/users", header)
				if status != tc.status || body != tc.body {
					t.Fatalf("GET /admin/users: %d %q, want %d %q", status, body, tc.status, tc.body)
				}
			})
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		conn, err := grpc.NewClient("passthrough:///"+webVIP+":9090", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(_ context.Context, addr string) (net.Conn, error) {
				return localmesh.Dial(client, addr, 5*time.Second)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		health := healthpb.NewHealthClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check through the waypoint: %v, %v; want SERVING", resp, err)
		}
		_, err = health.Check(metadata.AppendToOutgoingContext(ctx, "x-team", "blue"), &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Check as the blue team: %v, want PermissionDenied", err)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Decision == "deny" && e.Rule == "no-blue-team" })
		if e.GRPCStatus != "7" || e.Path != "/grpc.health.v1.Health/Check" {
			t.Errorf("waypoint access log = %+v, want grpc_status 7 on /grpc.health.v1.Health/Check", e)
		}
	})

	t.Run("weighted split", func(t *testing.T) { testSplit(t, m, wpLog) })
	t.Run("retry recovers a failed attempt", func(t *testing.T) { testRetries(t, m, wpLog, attempts) })
	t.Run("default retries recover UNAVAILABLE", func(t *testing.T) { testDefaultRetries(t, m, wpLog, attempts) })
	t.Run("policy change on a kept-alive connection", func(t *testing.T) {
		testPolicyOnKeptAlive(t, m, wpLog, wpBundle, fmt.Sprintf(webPolicy, "unknown until the mesh is up")+denyKeepalive)
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
	// Last: it replaces the waypoint process.
	t.Run("waypoint restart loses no request", func(t *testing.T) { testWaypointRestart(t, m) })
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

// webService is the web service: port 80 (HTTP) on the server's 8080 and
// 9090 (gRPC), served through the shop's waypoint.
func webService() state.LocalService {
	return state.LocalService{
		Name: "web", Namespace: "shop", VIPs: []string{webVIP}, Selector: map[string]string{"app": "server"},
		Waypoint: "shop/waypoint", Ports: []state.ServicePort{
			{Port: 80, TargetPort: 8080, Name: "http"},
			{Port: 9090, TargetPort: 9090, AppProtocol: "grpc"},
		},
	}
}

// webJWT is the web service's RequestAuthentication: tokens of the test
// issuer, whose key set (%s) is inline.
const webJWT = `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: web-jwt, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  jwtRules: [{issuer: "https://issuer.e2e.test", jwks: '%s'}]
`

// testIssuer signs JWTs with a key of its own.
type testIssuer struct {
	key *ecdsa.PrivateKey
}

func newIssuer(t *testing.T) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{key: key}
}

func (is *testIssuer) jwks(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: "e2e", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// token is a token for alice with the role claim.
func (is *testIssuer) token(t *testing.T, role string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: is.key, KeyID: "e2e"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(map[string]any{
		"iss": "https://issuer.e2e.test", "sub": "alice", "role": role, "exp": time.Now().Add(time.Hour).Unix(),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// serveGRPC runs gRPC's health service, SERVING, in the pod.
func serveGRPC(t *testing.T, m *mesh, pod string, port int) {
	t.Helper()
	l, err := localmesh.Listen(m.Pods[pod], fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	t.Cleanup(gs.Stop)
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, gs.Stop)()
		gs.Serve(l)
	})
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
	serveHandler(t, m, pod, port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s served by %s", r.Method, r.URL.Path, pod)
	}))
}

// request makes one HTTP request from inside a pod, as its app would, on a
// connection of its own.
func request(t *testing.T, m *mesh, pod, method, url string) (int, string) {
	t.Helper()
	return requestWith(t, m, pod, method, url, nil)
}

// requestWith is request with headers.
func requestWith(t *testing.T, m *mesh, pod, method, url string, header map[string]string) (int, string) {
	t.Helper()
	transport := &http.Transport{DisableKeepAlives: true, DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		return localmesh.Dial(m.Pods[pod], addr, 5*time.Second)
	}}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
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
func waypointEntry(t *testing.T, log *syncbuf.Buffer, match func(waypoint.AccessEntry) bool) waypoint.AccessEntry {
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
