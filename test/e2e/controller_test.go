package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	securityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// clusterApp is the app of the mesh driven by Kubernetes: two clients on
// node-1, the api on node-2.
var clusterApp = []localmesh.PodSpec{
	{Name: "frontend", Node: "node-1", Namespace: "shop", ServiceAccount: "frontend"},
	{Name: "intruder", Node: "node-1", Namespace: "shop", ServiceAccount: "intruder"},
	{Name: "api", Node: "node-2", Namespace: "shop", ServiceAccount: "api"},
}

const (
	frontendID = "spiffe://regomesh.test/ns/shop/sa/frontend"
	intruderID = "spiffe://regomesh.test/ns/shop/sa/intruder"
)

// TestControllerDrivesZtunnels runs the mesh from a real kube-apiserver
// and etcd: regomesh-controller watches it, and each node's ztunnel is
// the cmd/ztunnel binary in the node's namespace with --controller,
// streaming its state and downloading its signed policy bundle with its
// own SVID from a real SPIRE agent. Pods are Pod objects whose status the
// bed sets as a kubelet would, podIP the pod namespace's address.
//
// An AuthorizationPolicy created through the API refuses the next
// connection it denies (and closes the one already open), naming itself
// in the access log; a pod created afterwards is reachable through the
// mesh; with the controller stopped the proxies keep serving, and once it
// is back they resync, an open connection survives throughout, and the
// next change applies. A ztunnel authenticated as node-1 cannot subscribe
// for node-2.
func TestControllerDrivesZtunnels(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the ztunnel binary, runs kube-apiserver, etcd and SPIRE")
	}
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	m := startMeshFrom(t, localmesh.Config{Pods: clusterApp, Kubernetes: rc, ZtunnelBinary: buildZtunnel(t)}, false)
	policies := istioclient.NewForConfigOrDie(rc).SecurityV1().AuthorizationPolicies("shop")
	ctx := t.Context()
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)

	t.Run("streamed state: traffic through the mesh", func(t *testing.T) {
		for _, from := range []string{"frontend", "intruder"} {
			c := openEcho(t, m, from, target)
			c.Close()
		}
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.SourceID == intruderID
		})
		if e.Decision != "allow" || e.DestinationID != "spiffe://regomesh.test/ns/shop/sa/api" {
			t.Errorf("inbound entry before any policy = %+v, want allowed over mTLS to the api's identity", e)
		}
	})

	denied := t.Run("policy created through the API denies", func(t *testing.T) {
		kept := openEcho(t, m, "intruder", target)
		since, rev := len(m.accessEntries(t)), m.revision()
		if _, err := policies.Create(ctx, denyFrom("deny-intruder", "regomesh.test/ns/shop/sa/intruder"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		m.waitPolicyApplied(t, rev)
		closedByPolicy(t, kept)
		m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool { // the api's end, closed by policy
			return e.Direction == "inbound" && e.SourceID == intruderID && e.Flags == ztunnel.FlagPolicyClose
		})
		m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool { // its other end, before the next attempt's
			return e.Direction == "outbound" && e.SourceID == intruderID
		})
		e := m.refused(t, m.Pods["intruder"], intruderID, target)
		if e.Policy != "shop/deny-intruder" || e.Rule != "0" || e.Reason != "denied by DENY policy" {
			t.Errorf("deny entry names %q rule %q (%s), want shop/deny-intruder rule 0", e.Policy, e.Rule, e.Reason)
		}
		c := openEcho(t, m, "frontend", target) // the policy denies the intruder only
		c.Close()
	})
	if !denied {
		t.FailNow() // the rest needs the policy in force
	}

	t.Run("a new pod becomes reachable", func(t *testing.T) {
		pod, err := m.AddPod(ctx, localmesh.PodSpec{Name: "search", Node: "node-2", Namespace: "shop", ServiceAccount: "search"})
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, pod, 9090)
		c := openEcho(t, m, "frontend", fmt.Sprintf("%s:9090", pod.IP))
		c.Close()
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.DestinationID == "spiffe://regomesh.test/ns/shop/sa/search"
		})
		if e.Decision != "allow" || e.SourceID != frontendID {
			t.Errorf("the new pod's inbound entry = %+v, want the frontend allowed over mTLS", e)
		}
	})

	t.Run("controller restart: proxies keep serving and resync", func(t *testing.T) {
		kept := openEcho(t, m, "frontend", target)
		if err := m.ControlPlane.Stop(); err != nil {
			t.Fatalf("controller: %v", err)
		}
		echoes(t, kept, "while the controller is away")
		c := openEcho(t, m, "frontend", target) // new connections too, from the state held
		c.Close()
		m.refused(t, m.Pods["intruder"], intruderID, target) // and the policy held
		if err := m.ControlPlane.Start(ctx); err != nil {
			t.Fatal(err)
		}
		m.waitResynced(t)
		rev := m.revision()
		m.waitPolicyHeld(t, rev) // the restarted controller's bundle
		echoes(t, kept, "after the controller came back")
		if err := policies.Delete(ctx, "deny-intruder", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := policies.Create(ctx, denyFrom("deny-search", "regomesh.test/ns/shop/sa/search"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		m.waitPolicyApplied(t, rev)
		c = openEcho(t, m, "intruder", target) // the change applied: the intruder is let in again
		c.Close()
		echoes(t, kept, "after the change")
	})

	t.Run("node-1's ztunnel cannot subscribe for node-2", func(t *testing.T) {
		source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+m.Agent("node-1").WorkloadSocket())))
		if err != nil {
			t.Fatal(err)
		}
		defer source.Close()
		if svid, err := source.GetX509SVID(); err != nil || svid.ID.String() != "spiffe://regomesh.test/regomesh/ztunnel/node-1" {
			t.Fatalf("the SVID node-1's ztunnel gets: %v, %v", svid, err)
		}
		claimed := subscribe(t, m, source, "node-2")
		if err := claimed.err; err == nil || !strings.Contains(err.Error(), `may subscribe for node "node-1" only, not "node-2"`) {
			t.Errorf("subscribing as node-2 with node-1's SVID: %v, want PermissionDenied", err)
		}
		if claimed.applied != nil {
			t.Errorf("node-1's SVID subscribing as node-2 was sent a state: %v", names(claimed.applied))
		}
		own := subscribe(t, m, source, "node-1")
		if own.err != nil {
			t.Fatal(own.err)
		}
		if got := names(own.applied); !strings.Contains(got, "shop/frontend") || strings.Contains(got, "shop/api") {
			t.Errorf("node-1's scope = %s, want its own pods, not node-2's", got)
		}
	})
}

// denyFrom is a DENY AuthorizationPolicy of the shop namespace refusing
// principal.
func denyFrom(name, principal string) *istiosecurity.AuthorizationPolicy {
	return &istiosecurity.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: securityv1beta1.AuthorizationPolicy{
			Action: securityv1beta1.AuthorizationPolicy_DENY,
			Rules:  []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{principal}}}}}},
		},
	}
}

// revision is the mesh bundle's revision the controller serves now.
func (m *mesh) revision() string { return m.ControlPlane.Revisions()[wire.MeshBundle] }

// waitPolicyApplied waits until the controller serves a mesh bundle other
// than revision old and every ztunnel has loaded it.
func (m *mesh) waitPolicyApplied(t *testing.T, old string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	rev := m.revision()
	for ; rev == old; rev = m.revision() {
		if time.Now().After(deadline) {
			t.Fatalf("the controller still serves bundle revision %s", old)
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.waitPolicyHeld(t, rev)
}

// waitPolicyHeld waits until every ztunnel has loaded the controller's
// mesh bundle of revision rev.
func (m *mesh) waitPolicyHeld(t *testing.T, rev string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, p := range m.Processes {
		if err := p.WaitPolicyRevision(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
}

// waitResynced waits until every ztunnel has ACKed the restarted
// controller's state.
func (m *mesh) waitResynced(t *testing.T) {
	t.Helper()
	stream := m.ControlPlane.Stream()
	deadline := time.Now().Add(time.Minute)
	for node := range m.Processes {
		id, err := wire.ZtunnelID(m.TrustDomain, node)
		if err != nil {
			t.Fatal(err)
		}
		for {
			st, ok := stream.Proxy(id.String())
			if ok && st.Streams > 0 && st.AckedVersion == stream.Version() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never ACKed the restarted controller's version %s: %+v", node, stream.Version(), st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// echoes checks that the open connection c still carries bytes both ways.
func echoes(t *testing.T, c interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
	SetDeadline(time.Time) error
}, when string) {
	t.Helper()
	msg := "still here " + when
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("%s: the open connection broke: %v", when, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("%s: the open connection echoed %q, %v", when, buf, err)
	}
}

// subscription is what one subscription to the controller's stream got.
type subscription struct {
	err     error
	applied *state.Snapshot // the first state applied, nil if none
}

// subscribe subscribes to the controller's stream with source's SVID as
// a ztunnel of node, waits for the first state (or the refusal), and
// stops.
func subscribe(t *testing.T, m *mesh, source *workloadapi.X509Source, node string) subscription {
	t.Helper()
	var got atomic.Pointer[state.Snapshot]
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: m.ControlPlane.LocalStreamAddr, SVID: source, Bundle: source, Controller: m.ControlPlane.ID,
		Node: node, TrustDomain: m.TrustDomain.Name(), MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply:  func(s *state.Snapshot) { got.CompareAndSwap(nil, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := client.Start(t.Context(), 10*time.Second)
	if stop != nil {
		stop()
	}
	return subscription{err: err, applied: got.Load()}
}

// names lists a state's workloads as <namespace>/<name>.
func names(s *state.Snapshot) string {
	if s == nil {
		return "(none)"
	}
	var out []string
	for _, w := range s.Workloads {
		out = append(out, w.Namespace+"/"+w.Name)
	}
	return strings.Join(out, " ")
}
