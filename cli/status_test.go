package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/controller/xds"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// The table: one row a proxy, ages against the controller's clock,
// revisions shortened and those behind the current one marked, a NACK's
// reason on one line. (The whole path, from a real controller with real
// stream clients, is cmd/regomesh-controller's TestStatus.)
func TestWriteStatus(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	report := xds.StatusReport{
		Time: now, Version: "7",
		Bundles: map[string]string{wire.MeshBundle: "3f2a1c9e0b1d77aa", wire.WaypointBundle("shop/wp"): "r2"},
		Proxies: []xds.ProxyStatus{
			{ID: "spiffe://td/ns/shop/sa/wp", Kind: xds.Waypoint, Streams: 1, AckedVersion: "7", AckedAt: now.Add(-90 * time.Second),
				Bundles: map[string]string{wire.MeshBundle: "3f2a1c9e0b1d77aa", wire.WaypointBundle("shop/wp"): "r1"}},
			{ID: "spiffe://td/regomesh/ztunnel/node1", Kind: xds.Ztunnel, Node: "node1", Streams: 1, AckedVersion: "5", AckedAt: now.Add(-12 * time.Second),
				Bundles:  map[string]string{wire.MeshBundle: "3f2a1c9e0b1d77aa"},
				LastNACK: &xds.NACK{Type: wire.TypeURL, Version: "6", Reason: "xds: resource Kubernetes//Pod/shop/web-2: workload Kubernetes//Pod/shop/web-2:\naddress 127.0.0.9 is not a routable unicast address", At: now.Add(-3 * time.Hour)}},
			{ID: "spiffe://td/regomesh/ztunnel/node2", Kind: xds.Ztunnel, Node: "node2",
				LastNACK: &xds.NACK{Type: wire.BundleTypeURL, Version: "2", Reason: "bad revision", At: now.Add(-72 * time.Hour)}},
		},
	}
	var out bytes.Buffer
	if err := writeStatus(&out, report); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status", out.String())

	out.Reset()
	if err := writeStatus(&out, xds.StatusReport{Version: "0"}); err != nil {
		t.Fatal(err)
	}
	if want := "no proxy has subscribed to this controller replica since it started"; !strings.Contains(out.String(), want) {
		t.Errorf("no proxies: %q; want it to say %q", out.String(), want)
	}
	if strings.Contains(out.String(), "wait") {
		t.Errorf("no proxies: %q; want nothing said of waiting streams", out.String())
	}

	out.Reset()
	if err := writeStatus(&out, xds.StatusReport{Version: "0", Waiting: 3}); err != nil {
		t.Fatal(err)
	}
	if want := "3 proxy streams wait for this controller's first state"; !strings.Contains(out.String(), want) {
		t.Errorf("streams waiting: %q; want it to say %q", out.String(), want)
	}
}

// -o json prints the controller's report as served, which decodes back
// into it.
func TestStatusJSON(t *testing.T) {
	srv := xds.New(xds.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("td")})
	srv.UpdateBundles(map[string]string{wire.MeshBundle: "rev-1"})
	admin := httptest.NewServer(srv.StatusHandler())
	defer admin.Close()
	stdout, stderr, code := runBinary(t, "", "status", "--admin", admin.URL, "-o", "json")
	if code != ExitAllowed {
		t.Fatalf("status -o json: exit %d: %s", code, stderr)
	}
	var got xds.StatusReport
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("status -o json: %v:\n%s", err, stdout)
	}
	if got.Version != srv.Version() || got.Bundles[wire.MeshBundle] != "rev-1" || len(got.Proxies) != 0 || got.Time.IsZero() {
		t.Errorf("status -o json = %+v; want version %s, the mesh bundle at rev-1, no proxies", got, srv.Version())
	}
}

// Every failure to read the controller says which address was tried and
// what to check.
func TestStatusErrors(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>hello</html>")) }))
	defer html.Close()
	for _, tc := range []struct {
		name, admin string
		want        []string
	}{
		{"unreachable", refused, []string{"cannot reach regomesh-controller's admin endpoint at " + refused, "connection refused", "port-forward", "docs/proxy-status.md"}},
		{"not the controller", notFound.URL, []string{notFound.URL + "/debug/proxies answered 404 Not Found"}},
		{"not JSON", html.URL, []string{"did not answer with the proxies' status", "invalid character"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runBinary(t, "", "status", "--admin", tc.admin)
			if code != ExitError {
				t.Errorf("exit %d, want %d", code, ExitError)
			}
			for _, want := range tc.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q; want it to contain %q", stderr, want)
				}
			}
		})
	}
}

// Several --admin, one per controller replica: each replica's version,
// and every replica's proxies in one table, the replica first; one that
// cannot be read is reported, the others shown, and the exit status is
// an error. -o json is then a list, one report per replica.
func TestStatusReplicas(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("td")
	one, two := xds.New(xds.Config{TrustDomain: td}), xds.New(xds.Config{TrustDomain: td})
	one.UpdateBundles(map[string]string{wire.MeshBundle: "rev-1"})
	two.UpdateBundles(map[string]string{wire.MeshBundle: "rev-2"})
	a, b := httptest.NewServer(one.StatusHandler()), httptest.NewServer(two.StatusHandler())
	defer a.Close()
	defer b.Close()
	stdout, stderr, code := runBinary(t, "", "status", "--admin", a.URL, "--admin", b.URL)
	if code != ExitAllowed {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"controller " + a.URL + ": state version", "bundles/mesh=rev-1", "controller " + b.URL + ":", "bundles/mesh=rev-2", "CONTROLLER  PROXY"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, code = runBinary(t, "", "status", "--admin", a.URL, "--admin", b.URL, "-o", "json")
	var replicas []replicaStatus
	if err := json.Unmarshal([]byte(stdout), &replicas); err != nil || code != ExitAllowed {
		t.Fatalf("-o json: exit %d, %v:\n%s", code, err, stdout)
	}
	if len(replicas) != 2 || replicas[0].Admin != a.URL || replicas[1].Report == nil || replicas[1].Report.Bundles[wire.MeshBundle] != "rev-2" {
		t.Errorf("-o json = %+v; want both replicas' reports, in order", replicas)
	}

	// A replica that hangs costs the others nothing: each has its own
	// --timeout.
	hung := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hung)
	stdout, stderr, code = runBinary(t, "", "status", "--timeout", "1s", "--admin", slow.URL, "--admin", a.URL)
	if code != ExitError || !strings.Contains(stdout, "bundles/mesh=rev-1") || !strings.Contains(stderr, "deadline exceeded") {
		t.Errorf("one replica hung: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	stdout, stderr, code = runBinary(t, "", "status", "--admin", a.URL, "--admin", gone.URL)
	if code != ExitError || !strings.Contains(stdout, "bundles/mesh=rev-1") || !strings.Contains(stdout, "controller "+gone.URL+": not read") ||
		!strings.Contains(stderr, "cannot reach regomesh-controller's admin endpoint at "+gone.URL) {
		t.Errorf("one replica gone: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
