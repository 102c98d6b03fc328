package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// TestControllerDrivesWaypoint runs waypointApp from a real kube-apiserver:
// the shop's waypoint is a Gateway of class istio-waypoint with a pod
// labelled with its name, the web service a Service labelled
// istio.io/use-waypoint, and the waypoint process streams its state and
// downloads its Gateway's signed bundle from the controller (--controller,
// --gateway), as the ztunnels do theirs. An AuthorizationPolicy created
// through the API and targeting the Gateway denies one path at the
// waypoint, with Envoy's 403, and the waypoint's access log names it;
// another path is still served.
func TestControllerDrivesWaypoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the ztunnel and waypoint binaries, runs kube-apiserver, etcd and SPIRE")
	}
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	wpLog := &syncbuf.Buffer{}
	m := startMeshFrom(t, localmesh.Config{
		Pods: waypointApp, Services: []state.LocalService{webService()}, Kubernetes: rc,
		ZtunnelBinary: buildZtunnel(t), WaypointBinary: buildCommand(t, "waypoint"), WaypointAccessLog: wpLog,
	}, false)
	serveHTTP(t, m, "server", 8080)
	clientID := m.Identity(spec(t, m, "client")).String()

	t.Run("through the waypoint before any policy", func(t *testing.T) {
		before := len(m.accessEntries(t))
		status, body := request(t, m, "client", http.MethodGet, "http://"+webVIP+"/orders/7")
		if status != http.StatusOK || body != "GET /orders/7 served by server" {
			t.Fatalf("GET /orders/7: %d %q, want 200 from the server", status, body)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/orders/7" })
		if e.Decision != "allow" || e.Status != http.StatusOK || e.SourceID != clientID {
			t.Errorf("waypoint access log = %+v, want an allow from the client, 200", e)
		}
		m.viaWaypoint(t, before)
	})

	policies := istioclient.NewForConfigOrDie(rc).SecurityV1().AuthorizationPolicies("shop")
	if _, err := policies.Create(t.Context(), denyPathAtGateway("no-private", "waypoint", "/private/*"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("policy created through the API denies at the waypoint", func(t *testing.T) {
		status, body := waitForStatus(t, m, "http://"+webVIP+"/private/keys", http.StatusForbidden)
		if body != "RBAC: access denied" {
			t.Fatalf("GET /private/keys: %d %q, want Envoy's 403", status, body)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool {
			return e.Path == "/private/keys" && e.Decision == "deny"
		})
		if e.Policy != "shop/no-private" || e.Rule != "0" || e.Status != http.StatusForbidden || e.SourceID != clientID {
			t.Errorf("waypoint access log = %+v, want the client denied by shop/no-private rule 0, 403", e)
		}
	})

	t.Run("another path is still allowed", func(t *testing.T) {
		status, body := request(t, m, "client", http.MethodGet, "http://"+webVIP+"/orders/8")
		if status != http.StatusOK || body != "GET /orders/8 served by server" {
			t.Fatalf("GET /orders/8: %d %q, want 200 from the server", status, body)
		}
		e := waypointEntry(t, wpLog, func(e waypoint.AccessEntry) bool { return e.Path == "/orders/8" })
		if e.Decision != "allow" || e.Status != http.StatusOK {
			t.Errorf("waypoint access log = %+v, want an allow, 200", e)
		}
	})
}

// denyPathAtGateway is an AuthorizationPolicy of the waypoint's Gateway
// gateway denying requests for path.
func denyPathAtGateway(name, gateway, path string) *istiosecurity.AuthorizationPolicy {
	return &istiosecurity.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: securityv1beta1.AuthorizationPolicy{
			TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: gateway}},
			Action:     securityv1beta1.AuthorizationPolicy_DENY,
			Rules:      []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Paths: []string{path}}}}}},
		},
	}
}

// waitForStatus repeats a GET of url from the client until it answers
// want: a policy reaches the waypoint a moment after it is created.
func waitForStatus(t *testing.T, m *mesh, url string, want int) (int, string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		status, body := request(t, m, "client", http.MethodGet, url)
		if status == want {
			return status, body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s still answers %d %q, want %d", url, status, strings.TrimSpace(body), want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
