package controller_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/policy"
	istiopolicy "github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel/state"
)

const trustDomain = "regomesh.test"

// waitTimeout bounds each wait for a published update: a rebuild follows
// a change within the debounce, but the API server and the informers are
// slow on a busy two-core machine.
const waitTimeout = 30 * time.Second

// env is one real API server, a controller watching it, and the clients
// the tests change the cluster with.
type env struct {
	t        *testing.T
	ctx      context.Context
	kube     kubernetes.Interface
	istio    istioclient.Interface
	gateways gatewayclient.Interface
	updates  *recorder
	// statusWrites counts the controller's requests to status subresources.
	statusWrites *statusWrites
}

// statusWrites counts PUTs to status subresources by path.
type statusWrites struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *statusWrites) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/status") {
			s.mu.Lock()
			s.n[r.URL.Path]++
			s.mu.Unlock()
		}
		return rt.RoundTrip(r)
	})
}

func (s *statusWrites) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[path]
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func start(t *testing.T) *env {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	rec := &recorder{changed: make(chan struct{})}
	writes := &statusWrites{n: map[string]int{}}
	controllerRC := rest.CopyConfig(rc)
	controllerRC.Wrap(writes.wrap)
	c, err := controller.New(controllerRC, controller.Config{
		TrustDomain: trustDomain, ClusterDomain: "example.local",
		Debounce: 20 * time.Millisecond, Publish: rec.set,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		RegoNamespaces: []string{"tenant"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &env{
		t: t, ctx: ctx, updates: rec, statusWrites: writes,
		kube:     kubernetes.NewForConfigOrDie(rc),
		istio:    istioclient.NewForConfigOrDie(rc),
		gateways: gatewayclient.NewForConfigOrDie(rc),
	}
}

// testWriter logs the controller's lines through t, while t runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// recorder keeps the last published update and wakes waiters on each.
type recorder struct {
	mu      sync.Mutex
	last    *controller.Update
	changed chan struct{} // closed and replaced on every update
}

func (r *recorder) set(u *controller.Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = u
	close(r.changed)
	r.changed = make(chan struct{})
}

// waitFor returns the first published update (the current one included)
// for which cond returns "" and fails the test with cond's last
// complaint when none comes in time.
func (e *env) waitFor(what string, cond func(*controller.Update) string) *controller.Update {
	e.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	complaint := "no update published"
	for {
		e.updates.mu.Lock()
		u, changed := e.updates.last, e.updates.changed
		e.updates.mu.Unlock()
		if u != nil {
			if complaint = cond(u); complaint == "" {
				return u
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			e.t.Fatalf("%s: after %v: %s", what, waitTimeout, complaint)
		}
	}
}

func (e *env) namespace(name string, labels map[string]string) {
	e.t.Helper()
	_, err := e.kube.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
}

// pod creates a pod and, when ip is set, reports it Running (and Ready)
// with that address, as a kubelet would.
func (e *env) pod(namespace, name, ip string, labels map[string]string) {
	e.t.Helper()
	pods := e.kube.CoreV1().Pods(namespace)
	pod, err := pods.Create(e.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: "node-" + namespace, ServiceAccountName: "sa-" + name,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if ip == "" {
		return
	}
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := pods.UpdateStatus(e.ctx, pod, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) service(namespace, name string, labels, selector map[string]string) *corev1.Service {
	e.t.Helper()
	svc, err := e.kube.CoreV1().Services(namespace).Create(e.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("web")},
				{Name: "db", Port: 5432, AppProtocol: ptr("tcp")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return svc
}

func ptr[T any](v T) *T { return &v }

// workload describes w for comparisons: every field the model sets.
func workload(w *state.Workload) string {
	if w == nil {
		return "<none>"
	}
	labels := slices.Sorted(maps.Keys(w.Labels))
	for i, k := range labels {
		labels[i] = k + "=" + w.Labels[k]
	}
	return fmt.Sprintf("uid=%s sa=%s ips=%v node=%s protocol=%s waypoint=%q td=%s labels=%s",
		w.UID, w.ServiceAccount, w.IPs, w.Node, w.Protocol, w.Waypoint, w.TrustDomain, strings.Join(labels, ","))
}

func workloads(s *state.Snapshot) string {
	var b strings.Builder
	for _, w := range s.Workloads {
		fmt.Fprintf(&b, "%s/%s %s\n", w.Namespace, w.Name, workload(w))
	}
	return b.String()
}

// One cluster for every case, each in namespaces of its own: the API
// server takes longer to start than the cases take to run.
func TestController(t *testing.T) {
	e := start(t)
	e.waitFor("first update", func(u *controller.Update) string { return "" })
	t.Run("enrolment", func(t *testing.T) { e.t = t; testEnrolment(e) })
	t.Run("waypoints", func(t *testing.T) { e.t = t; testWaypoints(e) })
	t.Run("policies", func(t *testing.T) { e.t = t; testPolicies(e) })
	t.Run("invalid policy", func(t *testing.T) { e.t = t; testInvalidPolicy(e) })
	t.Run("deleted pod", func(t *testing.T) { e.t = t; testDeletedPod(e) })
	t.Run("user rego", func(t *testing.T) { e.t = t; testUserRego(e) })
}

func testEnrolment(e *env) {
	e.namespace("shop", map[string]string{"istio.io/dataplane-mode": "ambient"})
	e.namespace("legacy", nil)
	e.pod("shop", "web-1", "10.1.0.1", map[string]string{"app": "web"})
	e.pod("shop", "web-2", "10.1.0.2", map[string]string{"app": "web", "istio.io/dataplane-mode": "none"})
	e.pod("shop", "cron", "10.1.0.3", map[string]string{"istio.io/dataplane-mode": "none"})
	e.pod("shop", "pending", "", map[string]string{"app": "web"})
	e.pod("legacy", "db-1", "10.1.1.1", map[string]string{"app": "db"})
	e.pod("legacy", "batch", "10.1.1.2", nil)
	e.pod("legacy", "solo", "10.1.1.3", map[string]string{"istio.io/dataplane-mode": "ambient"})
	web := e.service("shop", "web", nil, map[string]string{"app": "web"})
	e.service("legacy", "db", nil, map[string]string{"app": "db"})

	want := map[string]string{
		"shop/web-1": "uid=Kubernetes//Pod/shop/web-1 sa=sa-web-1 ips=[10.1.0.1] node=node-shop protocol=HBONE waypoint=\"\" td=regomesh.test labels=app=web",
		// Opted out, but a service selects it: outside the mesh.
		"shop/web-2":   "uid=Kubernetes//Pod/shop/web-2 sa=sa-web-2 ips=[10.1.0.2] node=node-shop protocol=NONE waypoint=\"\" td=regomesh.test labels=app=web,istio.io/dataplane-mode=none",
		"shop/cron":    "<none>", // opted out, selected by nothing
		"shop/pending": "<none>", // no address yet
		"legacy/db-1":  "uid=Kubernetes//Pod/legacy/db-1 sa=sa-db-1 ips=[10.1.1.1] node=node-legacy protocol=NONE waypoint=\"\" td=regomesh.test labels=app=db",
		"legacy/batch": "<none>",
		"legacy/solo":  "uid=Kubernetes//Pod/legacy/solo sa=sa-solo ips=[10.1.1.3] node=node-legacy protocol=HBONE waypoint=\"\" td=regomesh.test labels=istio.io/dataplane-mode=ambient",
	}
	u := e.waitFor("enrolment", func(u *controller.Update) string {
		for _, key := range slices.Sorted(maps.Keys(want)) {
			ns, name, _ := strings.Cut(key, "/")
			w, _ := u.Snapshot.Workload(ns, name)
			if got := workload(w); got != want[key] {
				return fmt.Sprintf("workload %s = %s; want %s", key, got, want[key])
			}
		}
		if _, ok := u.Snapshot.ServiceByVIP(netip.MustParseAddr(web.Spec.ClusterIP)); !ok {
			return "no service web yet"
		}
		return ""
	})
	svc, _ := u.Snapshot.ServiceByVIP(netip.MustParseAddr(web.Spec.ClusterIP))
	got := fmt.Sprintf("%s/%s host=%s vips=%v ports=%+v selector=%v waypoint=%q",
		svc.Namespace, svc.Name, svc.Hostname, svc.VIPs, svc.Ports, svc.Selector, svc.Waypoint)
	wantSvc := fmt.Sprintf("shop/web host=web.shop.svc.example.local vips=[%s] ports=[{Port:80 TargetPort:8080 Name:http AppProtocol:} {Port:5432 TargetPort:5432 Name:db AppProtocol:tcp}] selector=map[app:web] waypoint=\"\"",
		web.Spec.ClusterIP)
	if got != wantSvc {
		t := e.t
		t.Errorf("service = %s\nwant      %s", got, wantSvc)
	}
	var endpoints []string
	for _, w := range u.Snapshot.Endpoints(svc) {
		endpoints = append(endpoints, w.Name+":"+string(w.Protocol))
	}
	if got := strings.Join(endpoints, ","); got != "web-1:HBONE,web-2:NONE" {
		e.t.Errorf("endpoints of web = %s; want web-1:HBONE,web-2:NONE", got)
	}
}

func testWaypoints(e *env) {
	e.namespace("bank", map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})
	_, err := e.gateways.GatewayV1().Gateways("bank").Create(e.ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Labels: map[string]string{"istio.io/waypoint-for": "all"}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.pod("bank", "waypoint-5d8f", "10.2.0.1", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"})
	e.pod("bank", "teller", "10.2.0.2", map[string]string{"app": "teller"})
	e.pod("bank", "vault", "10.2.0.3", map[string]string{"app": "vault", "istio.io/use-waypoint": "none"})
	e.pod("bank", "audit", "10.2.0.4", map[string]string{"app": "audit", "istio.io/use-waypoint": "missing"})
	e.service("bank", "teller", nil, map[string]string{"app": "teller"})
	e.service("bank", "vault", map[string]string{"istio.io/use-waypoint": "none"}, map[string]string{"app": "vault"})

	wantWorkloads := map[string]string{
		"waypoint": "uid=Kubernetes//Pod/bank/waypoint-5d8f sa=sa-waypoint-5d8f ips=[10.2.0.1] node=node-bank protocol=HBONE waypoint=\"\" td=regomesh.test labels=gateway.networking.k8s.io/gateway-name=waypoint",
		"teller":   "uid=Kubernetes//Pod/bank/teller sa=sa-teller ips=[10.2.0.2] node=node-bank protocol=HBONE waypoint=\"bank/waypoint\" td=regomesh.test labels=app=teller",
		"vault":    "uid=Kubernetes//Pod/bank/vault sa=sa-vault ips=[10.2.0.3] node=node-bank protocol=HBONE waypoint=\"\" td=regomesh.test labels=app=vault,istio.io/use-waypoint=none",
		// A waypoint that does not exist binds nothing, as in Istio.
		"audit":         "uid=Kubernetes//Pod/bank/audit sa=sa-audit ips=[10.2.0.4] node=node-bank protocol=HBONE waypoint=\"\" td=regomesh.test labels=app=audit,istio.io/use-waypoint=missing",
		"waypoint-5d8f": "<none>", // the waypoint's pod is the workload named as its Gateway
	}
	wantServices := map[string]string{"teller": "bank/waypoint", "vault": ""}
	u := e.waitFor("waypoints", func(u *controller.Update) string {
		for _, name := range slices.Sorted(maps.Keys(wantWorkloads)) {
			w, _ := u.Snapshot.Workload("bank", name)
			if got := workload(w); got != wantWorkloads[name] {
				return fmt.Sprintf("workload bank/%s = %s; want %s", name, got, wantWorkloads[name])
			}
		}
		for name, want := range wantServices {
			i := slices.IndexFunc(u.Snapshot.Services, func(s *state.Service) bool { return s.Namespace == "bank" && s.Name == name })
			if i < 0 {
				return "no service bank/" + name
			}
			if got := u.Snapshot.Services[i].Waypoint; got != want {
				return fmt.Sprintf("service bank/%s waypoint = %q; want %q", name, got, want)
			}
		}
		if u.WaypointBundles["bank/waypoint"] == nil {
			return "no bundle for waypoint bank/waypoint"
		}
		return ""
	})
	if !u.Snapshot.IsWaypoint("spiffe://regomesh.test/ns/bank/sa/sa-waypoint-5d8f") {
		e.t.Error("the waypoint's identity is not a waypoint's in the state")
	}
	if u.Snapshot.IsWaypoint("spiffe://regomesh.test/ns/bank/sa/sa-teller") {
		e.t.Error("teller's identity is a waypoint's in the state")
	}
	testWaypointPolicies(e)
}

// Policies attached to waypoints by targetRefs get istiod's
// WaypointAccepted, and the waypoint's own bundle.
func testWaypointPolicies(e *env) {
	aps := e.istio.SecurityV1().AuthorizationPolicies("bank")
	for name, ref := range map[string]*typev1beta1.PolicyTargetReference{
		"at-waypoint": {Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"},
		"at-teller":   {Kind: "Service", Name: "teller"},
		"at-vault":    {Kind: "Service", Name: "vault"},
		"at-nothing":  {Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "nothing"},
	} {
		_, err := aps.Create(e.ctx, &istiosecurity.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: securityv1beta1.AuthorizationPolicy{
				TargetRefs: []*typev1beta1.PolicyTargetReference{ref},
				Action:     securityv1beta1.AuthorizationPolicy_DENY,
				Rules:      []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"DELETE"}}}}}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	for name, want := range map[string]string{
		"at-waypoint": "True Accepted: bound to bank/waypoint",
		"at-teller":   "True Accepted: bound to bank/waypoint",
		"at-vault":    "False AncestorNotBound: Service bank/vault is not bound to a waypoint",
		"at-nothing":  "False TargetNotFound: not bound",
	} {
		if got := e.conditionOf("bank", name, "WaypointAccepted"); got != want {
			e.t.Errorf("%s condition = %q; want %q", name, got, want)
		}
	}
	e.waitFor("the waypoint's bundle", func(u *controller.Update) string {
		if _, ok := u.WaypointBundles["bank/waypoint"].Translation.Modules["mesh/policies/istio/bank/at-waypoint.rego"]; !ok {
			return "bank/at-waypoint not in the waypoint's bundle: " + moduleNames(u.WaypointBundles["bank/waypoint"])
		}
		return ""
	})
}

func allowFrom(name, principal string) *istiosecurity.AuthorizationPolicy {
	return &istiosecurity.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: securityv1beta1.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			Action:   securityv1beta1.AuthorizationPolicy_ALLOW,
			Rules: []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
				Principals: []string{principal},
			}}}}},
		},
	}
}

// conditionOf waits for the AuthorizationPolicy's condition of type typ
// at the policy's current generation, and returns "status reason: message".
func (e *env) conditionOf(namespace, name, typ string) string {
	e.t.Helper()
	var last string
	deadline := time.Now().Add(waitTimeout)
	for {
		ap, err := e.istio.SecurityV1().AuthorizationPolicies(namespace).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, c := range ap.Status.GetConditions() {
			if c.GetType() == typ && c.GetObservedGeneration() == ap.Generation {
				return c.GetStatus() + " " + c.GetReason() + ": " + c.GetMessage()
			}
			last = fmt.Sprintf("%v", ap.Status.GetConditions())
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("AuthorizationPolicy %s/%s: no %s condition at generation %d; conditions: %s", namespace, name, typ, ap.Generation, last)
		}
		// The status is written by the controller after it publishes: wait
		// for the next update, or a short while, before reading again.
		e.nextUpdateOr(200 * time.Millisecond)
	}
}

// nextUpdateOr waits for an update to be published, at most d.
func (e *env) nextUpdateOr(d time.Duration) {
	e.updates.mu.Lock()
	changed := e.updates.changed
	e.updates.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	}
}

// moduleNames lists the bundle's modules whose names hold each of parts.
func moduleNames(b *controller.Bundle, parts ...string) string {
	if b == nil {
		return "<no bundle>"
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(b.Translation.Modules)) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(name, p) }) {
			out = append(out, name)
		}
	}
	return strings.Join(out, ",")
}

func testPolicies(e *env) {
	e.namespace("pay", map[string]string{"istio.io/dataplane-mode": "ambient"})
	aps := e.istio.SecurityV1().AuthorizationPolicies("pay")
	if _, err := aps.Create(e.ctx, allowFrom("allow-web", "regomesh.test/ns/shop/sa/sa-web-1"), metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	l7 := allowFrom("allow-get", "regomesh.test/ns/shop/sa/sa-web-1")
	l7.Spec.Rules[0].To = []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"GET"}}}}
	if _, err := aps.Create(e.ctx, l7, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	_, err := e.istio.SecurityV1().PeerAuthentications("pay").Create(e.ctx, &istiosecurity.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "strict"},
		Spec: securityv1beta1.PeerAuthentication{Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{
			Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	const want = "mesh/policies/istio/pay/allow-get.rego,mesh/policies/istio/pay/allow-web.rego,mesh/policies/istio_peerauthentication/pay/strict.rego"
	u := e.waitFor("policies translated", func(u *controller.Update) string {
		if got := moduleNames(u.Bundle, "/pay/"); got != want {
			return "bundle modules = " + got + "; want " + want
		}
		return ""
	})
	// The bundle is a real OPA bundle the engine loads.
	path := filepath.Join(e.t.TempDir(), "bundle.tar.gz")
	if err := os.WriteFile(path, u.Bundle.Archive, 0o644); err != nil {
		e.t.Fatal(err)
	}
	b, err := policy.ReadBundle(path, nil)
	if err != nil {
		e.t.Fatalf("the published bundle does not load: %v", err)
	}
	if b.Revision != u.Bundle.Revision {
		e.t.Errorf("bundle revision = %q; want %q", b.Revision, u.Bundle.Revision)
	}
	engine, err := policy.NewEngine(policy.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := engine.Load(e.ctx, b); err != nil {
		e.t.Fatalf("the engine refuses the published bundle: %v", err)
	}

	if got, want := e.conditionOf("pay", "allow-web", "ZtunnelAccepted"), "True Accepted: attached to ztunnel"; got != want {
		e.t.Errorf("allow-web condition = %q; want %q", got, want)
	}
	got := e.conditionOf("pay", "allow-get", "ZtunnelAccepted")
	if !strings.HasPrefix(got, "True UnsupportedValue: ") || !strings.Contains(got, "ztunnel does not support HTTP attributes (found: methods)") {
		e.t.Errorf("allow-get condition = %q; want True UnsupportedValue, ztunnel does not support HTTP attributes (found: methods)", got)
	}

	// Status is written only when it changes: another policy's arrival
	// rewrites nobody else's. Policies are written in order of name, so
	// once "zz-later" has its condition, that round is over.
	const webStatus = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/allow-web/status"
	before := e.statusWrites.count(webStatus)
	if before == 0 {
		e.t.Errorf("no PUT to %s counted", webStatus)
	}
	if _, err := aps.Create(e.ctx, allowFrom("zz-later", "regomesh.test/ns/shop/sa/sa-web-2"), metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.conditionOf("pay", "zz-later", "ZtunnelAccepted")
	if after := e.statusWrites.count(webStatus); after != before {
		e.t.Errorf("allow-web's status written %d more times, unchanged", after-before)
	}
}

func testInvalidPolicy(e *env) {
	aps := e.istio.SecurityV1().AuthorizationPolicies("pay")
	before := e.waitFor("policies in force", func(u *controller.Update) string {
		if len(u.Policies.AuthorizationPolicies) == 0 {
			return "no policies"
		}
		return ""
	})
	badCondition := []*securityv1beta1.Condition{{Key: "request.nonsense", Values: []string{"x"}}}

	// A new invalid policy is left out: nothing else changes.
	bad := allowFrom("bad", "regomesh.test/ns/shop/sa/sa-web-1")
	bad.Spec.Rules[0].When = badCondition
	if _, err := aps.Create(e.ctx, bad, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	got := e.conditionOf("pay", "bad", "ZtunnelAccepted")
	if !strings.HasPrefix(got, "False Invalid: ") || !strings.Contains(got, "request.nonsense") {
		e.t.Errorf("bad condition = %q; want False Invalid naming request.nonsense", got)
	}
	u := e.waitFor("bad reported", problemAbout("pay/bad"))
	if u.Bundle.Revision != before.Bundle.Revision {
		e.t.Errorf("bundle changed with an invalid policy: %s", moduleNames(u.Bundle))
	}
	if got, want := workloads(u.Snapshot), workloads(before.Snapshot); got != want {
		e.t.Errorf("workloads changed with an invalid policy:\n%s\nwant\n%s", got, want)
	}

	// An invalid change to a valid policy keeps its last valid version.
	web, err := aps.Get(e.ctx, "allow-web", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	web.Spec.Rules[0].When = badCondition
	if _, err := aps.Update(e.ctx, web, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	got = e.conditionOf("pay", "allow-web", "ZtunnelAccepted")
	if !strings.HasPrefix(got, "False Invalid: ") || !strings.HasSuffix(got, "(generation 1 stays in force)") {
		e.t.Errorf("allow-web condition = %q; want False Invalid, generation 1 in force", got)
	}
	u = e.waitFor("allow-web reported", problemAbout("pay/allow-web"))
	if u.Bundle.Revision != before.Bundle.Revision {
		e.t.Error("bundle changed with an invalid change to a policy")
	}
	i := slices.IndexFunc(u.Policies.AuthorizationPolicies, func(p *istiopolicy.Policy) bool { return p.ID() == "pay/allow-web" })
	if i < 0 || len(u.Policies.AuthorizationPolicies[i].Rules[0].When) != 0 {
		e.t.Error("allow-web's last valid version is not the one in force")
	}

	// Fixed, it applies.
	web, err = aps.Get(e.ctx, "allow-web", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	web.Spec.Rules[0].When = []*securityv1beta1.Condition{{Key: "source.namespace", Values: []string{"shop"}}}
	if _, err := aps.Update(e.ctx, web, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitFor("allow-web fixed", func(u *controller.Update) string {
		if u.Bundle.Revision == before.Bundle.Revision {
			return "bundle unchanged"
		}
		if !strings.Contains(u.Bundle.Translation.Modules["mesh/policies/istio/pay/allow-web.rego"], `"shop"`) {
			return "allow-web's module does not read source.namespace shop"
		}
		return ""
	})
	if got, want := e.conditionOf("pay", "allow-web", "ZtunnelAccepted"), "True Accepted: attached to ztunnel"; got != want {
		e.t.Errorf("allow-web condition = %q; want %q", got, want)
	}
}

func problemAbout(id string) func(*controller.Update) string {
	return func(u *controller.Update) string {
		for _, p := range u.Problems {
			if p.Kind == "AuthorizationPolicy" && p.Namespace+"/"+p.Name == id {
				return ""
			}
		}
		return "no problem reported about " + id
	}
}

func testDeletedPod(e *env) {
	e.waitFor("web-1 present", func(u *controller.Update) string {
		if _, ok := u.Snapshot.Workload("shop", "web-1"); !ok {
			return "no shop/web-1"
		}
		return ""
	})
	if err := e.kube.CoreV1().Pods("shop").Delete(e.ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: ptr[int64](0)}); err != nil {
		e.t.Fatal(err)
	}
	u := e.waitFor("web-1 gone", func(u *controller.Update) string {
		if _, ok := u.Snapshot.Workload("shop", "web-1"); ok {
			return "shop/web-1 still in the state"
		}
		if _, ok := u.Snapshot.WorkloadByIP(netip.MustParseAddr("10.1.0.1")); ok {
			return "10.1.0.1 still in the state"
		}
		return ""
	})
	if _, ok := u.Snapshot.Workload("shop", "web-2"); !ok {
		e.t.Error("shop/web-2 went with web-1")
	}
}
