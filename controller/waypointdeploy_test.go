package controller_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/internal/testgo"
)

// writes records the requests of one replica that would change
// something, by method and path, leaving out its Lease: all it sent, and
// those the API server accepted.
type writes struct {
	mu       sync.Mutex
	all      []string
	accepted []string
}

func (w *writes) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodGet || strings.Contains(r.URL.Path, "/leases") {
			return rt.RoundTrip(r)
		}
		req := r.Method + " " + r.URL.Path
		w.mu.Lock()
		w.all = append(w.all, req)
		w.mu.Unlock()
		resp, err := rt.RoundTrip(r)
		if err == nil && resp.StatusCode < 300 {
			w.mu.Lock()
			w.accepted = append(w.accepted, req)
			w.mu.Unlock()
		}
		return resp, err
	})
}

// countAccepted counts the requests req the API server accepted. One refused
// (a conflict: the replica wrote from a cache a step behind, and tries
// again) changed nothing.
func (w *writes) countAccepted(req string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range w.accepted {
		if r == req {
			n++
		}
	}
	return n
}

func (w *writes) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.all)
}

// Two replicas deploy waypoints: the leader applies a Gateway's objects,
// owned by it, labelled, with the Gateway's name in the waypoint's args,
// writes the Gateway Programmed with the Service's address, puts back a
// hand-edited Deployment, and applies again for a Gateway made anew; a
// Gateway of another class gets nothing; the other replica writes
// nothing at all.
func TestWaypointDeployment(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	kube := kubernetes.NewForConfigOrDie(rc)
	gws := gatewayclient.NewForConfigOrDie(rc)
	ctx := t.Context()
	text, err := os.ReadFile("testdata/waypoint-template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := controller.ParseWaypointTemplate(string(text))
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string) *writes {
		w := &writes{}
		crc := rest.CopyConfig(rc)
		crc.Wrap(w.wrap)
		c, err := controller.New(crc, controller.Config{
			TrustDomain: trustDomain, Debounce: 20 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("replica", name),
			LeaderElection: &controller.LeaderElection{
				Namespace: "default", Identity: name,
				LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 200 * time.Millisecond,
			},
			// The resync is what puts a hand edit back: short here.
			Waypoints: &controller.WaypointDeployment{Template: tmpl, Resync: 300 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		testgo.Go(t, func(ctx context.Context) {
			if err := c.Run(ctx); err != nil {
				t.Errorf("replica %s: Run: %v", name, err)
			}
		})
		return w
	}
	holder := func() string {
		l, err := kube.CoordinationV1().Leases("default").Get(ctx, "regomesh-controller", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	leader := start("replica-a")
	testgo.Eventually(t, "replica-a to hold the Lease", func() bool { return holder() == "replica-a" })
	follower := start("replica-b")

	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bank"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gateway := func(name, class string) *gatewayv1.Gateway {
		gw, err := gws.GatewayV1().Gateways("bank").Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: gatewayv1.GatewaySpec{
				GatewayClassName: gatewayv1.ObjectName(class),
				Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return gw
	}
	// The other class first: once the waypoint is programmed, the
	// controller has seen both.
	other := gateway("public", "example-class")
	gw := gateway("waypoint", "istio-waypoint")

	// Status: Accepted, and Programmed with the Service's address.
	var programmed *gatewayv1.Gateway
	testgo.Eventually(t, "Gateway bank/waypoint Programmed", func() bool {
		programmed, err = gws.GatewayV1().Gateways("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && meta.IsStatusConditionTrue(programmed.Status.Conditions, "Programmed")
	})
	svc, err := kube.CoreV1().Services("bank").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("Accepted=True Accepted (Resource accepted); Programmed=True Programmed (Resource programmed, assigned to service(s) waypoint.bank.svc.cluster.local:15008); addresses IPAddress=%s", svc.Spec.ClusterIP)
	if got := gatewayStatus(programmed); got != want {
		t.Errorf("Gateway status\n%s\nwant\n%s", got, want)
	}

	// The objects: owned by the Gateway, labelled with it.
	owner := fmt.Sprintf("[gateway.networking.k8s.io/v1 Gateway waypoint %s]", gw.UID)
	objs := map[string]func() (metav1.Object, error){
		"ServiceAccount": func() (metav1.Object, error) {
			return kube.CoreV1().ServiceAccounts("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		},
		"Deployment": func() (metav1.Object, error) {
			return kube.AppsV1().Deployments("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		},
		"Service": func() (metav1.Object, error) { return svc, nil },
		"PodDisruptionBudget": func() (metav1.Object, error) {
			return kube.PolicyV1().PodDisruptionBudgets("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		},
		"HorizontalPodAutoscaler": func() (metav1.Object, error) {
			return kube.AutoscalingV2().HorizontalPodAutoscalers("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		},
	}
	for kind, get := range objs {
		o, err := get()
		if err != nil {
			t.Errorf("%s bank/waypoint: %v", kind, err)
			continue
		}
		if got := owners(o); got != owner {
			t.Errorf("%s owners = %s; want %s", kind, got, owner)
		}
		l := o.GetLabels()
		if l["gateway.networking.k8s.io/gateway-name"] != "waypoint" || l["gateway.networking.k8s.io/gateway-class-name"] != "istio-waypoint" {
			t.Errorf("%s labels = %v; want the Gateway's name and class", kind, l)
		}
		if kind == "Deployment" && l["app.kubernetes.io/name"] != "waypoint" {
			t.Errorf("Deployment labels = %v; want the template's too", l)
		}
	}
	deploy, err := kube.AppsV1().Deployments("bank").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := deploy.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(wantArgs, "--gateway=bank/waypoint") {
		t.Errorf("waypoint args %v; want --gateway=bank/waypoint", wantArgs)
	}

	// A hand edit of the args is put back.
	const statusPath = "/apis/gateway.networking.k8s.io/v1/namespaces/bank/gateways/waypoint/status"
	statusWrites := leader.countAccepted("PUT " + statusPath)
	deploy.Spec.Template.Spec.Containers[0].Args = []string{"--gateway=bank/elsewhere"}
	if _, err := kube.AppsV1().Deployments("bank").Update(ctx, deploy, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	testgo.Eventually(t, "the Deployment's args put back", func() bool {
		d, err := kube.AppsV1().Deployments("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && slices.Equal(d.Spec.Template.Spec.Containers[0].Args, wantArgs)
	})
	// That took a resync, which changed no status: it had not changed.
	if n := leader.countAccepted("PUT " + statusPath); statusWrites == 0 || n != statusWrites {
		t.Errorf("Gateway status written %d times, then %d after a resync; want the same, at least once", statusWrites, n)
	}

	// The Gateway deleted and made again is another object: its waypoint
	// is applied again, owned by the new one (here, with no garbage
	// collector running, the old objects are still there to take over).
	if err := gws.GatewayV1().Gateways("bank").Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := gateway("waypoint", "istio-waypoint")
	testgo.Eventually(t, "the Deployment owned by the new Gateway", func() bool {
		d, err := kube.AppsV1().Deployments("bank").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && owners(d) == fmt.Sprintf("[gateway.networking.k8s.io/v1 Gateway waypoint %s]", again.UID)
	})

	// The other class: no objects, no status of ours.
	if _, err := kube.AppsV1().Deployments("bank").Get(ctx, "public", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Deployment of a Gateway of another class: %v; want not found", err)
	}
	if got, err := gws.GatewayV1().Gateways("bank").Get(ctx, other.Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if c := meta.FindStatusCondition(got.Status.Conditions, "Programmed"); c == nil || c.Status == metav1.ConditionTrue || len(got.Status.Addresses) > 0 {
		t.Errorf("Gateway of another class: status %s; want the API server's Pending defaults", gatewayStatus(got))
	}

	// The follower built everything and wrote nothing.
	if w := follower.list(); len(w) != 0 {
		t.Errorf("the replica that does not lead wrote: %v", w)
	}
}

func gatewayStatus(gw *gatewayv1.Gateway) string {
	var parts []string
	for _, c := range gw.Status.Conditions {
		if c.ObservedGeneration != gw.Generation {
			parts = append(parts, c.Type+" of generation "+fmt.Sprint(c.ObservedGeneration))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%s %s (%s)", c.Type, c.Status, c.Reason, c.Message))
	}
	var addrs []string
	for _, a := range gw.Status.Addresses {
		addrs = append(addrs, fmt.Sprintf("%s=%s", *a.Type, a.Value))
	}
	return strings.Join(parts, "; ") + "; addresses " + strings.Join(addrs, ",")
}

func owners(o metav1.Object) string {
	var out []string
	for _, r := range o.GetOwnerReferences() {
		out = append(out, fmt.Sprintf("%s %s %s %s", r.APIVersion, r.Kind, r.Name, r.UID))
	}
	return fmt.Sprint(out)
}
