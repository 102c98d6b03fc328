package chartstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/ztunnel/cni/install"
)

// TestAPIServerAccepts applies every object the charts render, for each
// value set, to a real kube-apiserver by server-side apply with strict
// field validation: the base chart's CRDs first, then the regomesh chart.
// It then checks the controller's service account, with a token of its
// own, can list and watch everything the controller reads and write
// AuthorizationPolicy status, and nothing else it was not granted.
func TestAPIServerAccepts(t *testing.T) {
	t.Parallel() // mostly waits on the API server, while TestFlags links
	cluster := kubeharness.New(t, kubeharness.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := newApplier(t, cluster.RESTConfig())

	a.applyAll(ctx, t, decode(t, mustRender(t, "regomesh-base", nil)))
	a.waitCRDs(ctx, t)
	for _, ns := range []string{namespace, "bookinfo"} {
		if _, err := a.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, set := range valueSets {
		a.applyAll(ctx, t, objects(t, "regomesh", values(t, set)))
	}

	// The API server does check what it is sent: ztunnel made privileged
	// beside its allowPrivilegeEscalation false is refused, and a field
	// the API does not have is refused too.
	ds := one[*appsv1.DaemonSet](t, objects(t, "regomesh", nil), "ztunnel")
	yes := true
	ds.Spec.Template.Spec.Containers[0].SecurityContext.Privileged = &yes
	if err := a.apply(ctx, ds); !apierrors.IsInvalid(err) {
		t.Errorf("ztunnel privileged without privilege escalation: %v, want Invalid", err)
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(schema.GroupVersionKind{Version: "v1", Kind: "ServiceAccount"})
	u.SetName("misspelt")
	u.SetNamespace(namespace)
	u.Object["automountServiceAccountTokens"] = false
	if err := a.apply(ctx, u); err == nil || !strings.Contains(err.Error(), "automountServiceAccountTokens") {
		t.Errorf("a ServiceAccount with a misspelt field: %v, want an error naming it", err)
	}

	checkControllerAccess(ctx, t, cluster, a.kube)
	checkControllerRuns(ctx, t, cluster, a)
	checkCNIAccess(ctx, t, cluster, a.kube)
}

// checkControllerRuns: the controller itself, run with the chart's
// service account token, leader election and waypoint template as the
// chart configures them, lists and watches everything it reads (else its
// caches never sync and nothing is published), takes its Lease, writes an
// AuthorizationPolicy's status, and deploys a Gateway's waypoint (strict
// server-side apply of the chart's template) and writes the Gateway
// Programmed: the RBAC is enough, not only in review.
func checkControllerRuns(ctx context.Context, t *testing.T, cluster *kubeharness.Cluster, a *applier) {
	tok, err := a.kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "regomesh-controller", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	published := make(chan struct{}, 1)
	c, err := controller.New(cluster.RESTConfigWithToken(tok.Status.Token), controller.Config{
		Debounce: 20 * time.Millisecond,
		Publish: func(*controller.Update) {
			select {
			case published <- struct{}{}:
			default:
			}
		},
		Logger:         slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)),
		LeaderElection: &controller.LeaderElection{Namespace: namespace, Name: "regomesh-controller", Identity: "chartstest"},
		Waypoints:      &controller.WaypointDeployment{Template: waypointTemplate(t, nil)},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the controller with the chart's token: Run: %v", err)
		}
	}()
	select {
	case <-published:
	case <-ctx.Done():
		t.Fatal("the controller with the chart's token published nothing: a list or watch it needs is forbidden (its caches never synced)")
	}
	ap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "chartstest-deny", "namespace": "bookinfo"},
		"spec":     map[string]any{"action": "DENY", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"namespaces": []any{"intruders"}}}}}}},
	}}
	if err := a.apply(ctx, ap); err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	deadline := time.Now().Add(45 * time.Second)
	for {
		got, err := a.dyn.Resource(gvr).Namespace("bookinfo").Get(ctx, "chartstest-deny", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		if len(conds) > 0 {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("the controller with the chart's token wrote no status in 45s (may it update authorizationpolicies/status, and hold its Lease?); its log:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkWaypointDeployed(ctx, t, a, func() string { mu.Lock(); defer mu.Unlock(); return logs.String() })
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(strings.ToLower(logs.String()), "forbidden") {
		t.Errorf("the controller with the chart's token met a forbidden request:\n%s", logs.String())
	}
}

// checkWaypointDeployed: a Gateway of class istio-waypoint gets its
// waypoint's Deployment, and its status Programmed.
func checkWaypointDeployed(ctx context.Context, t *testing.T, a *applier, logs func() string) {
	gw := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": "chartstest-waypoint", "namespace": "bookinfo"},
		"spec": map[string]any{
			"gatewayClassName": "istio-waypoint",
			"listeners":        []any{map[string]any{"name": "mesh", "port": int64(15008), "protocol": "HBONE"}},
		},
	}}
	if err := a.apply(ctx, gw); err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	programmed := func() bool {
		got, err := a.dyn.Resource(gvr).Namespace("bookinfo").Get(ctx, "chartstest-waypoint", metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Programmed" && m["status"] == "True" {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(45 * time.Second)
	for !programmed() {
		if time.Now().After(deadline) {
			t.Fatalf("the controller with the chart's token did not program Gateway bookinfo/chartstest-waypoint in 45s; its log:\n%s", logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	d, err := a.kube.AppsV1().Deployments("bookinfo").Get(ctx, "chartstest-waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the waypoint's Deployment: %v", err)
	}
	if got := argMap(d.Spec.Template.Spec.Containers[0].Args)["gateway"]; got != "bookinfo/chartstest-waypoint" {
		t.Errorf("the waypoint's --gateway=%s", got)
	}
}

// lockedWriter serialises a logger's writes into a builder.
type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// checkCNIAccess: the CNI installer, with its service account's own
// token, tells the DaemonSet it runs in (applied above) from an uninstall,
// and may read nothing else.
func checkCNIAccess(ctx context.Context, t *testing.T, cluster *kubeharness.Cluster, admin kubernetes.Interface) {
	tok, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "regomesh-cni", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	as := kubernetes.NewForConfigOrDie(cluster.RESTConfigWithToken(tok.Status.Token))
	if gone, err := install.DaemonSetGone(as, namespace, "regomesh-cni")(ctx); err != nil || gone {
		t.Errorf("the CNI installer reading its own DaemonSet: gone %v, %v; want present, so a restart keeps the plugin", gone, err)
	}
	if _, err := install.DaemonSetGone(as, namespace, "ztunnel")(ctx); !apierrors.IsForbidden(errors.Unwrap(err)) {
		t.Errorf("the CNI installer reading ztunnel's DaemonSet: %v, want forbidden", err)
	}
	if _, err := as.AppsV1().DaemonSets(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the CNI installer listing DaemonSets: %v, want forbidden", err)
	}
	if _, err := as.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the CNI installer listing Secrets: %v, want forbidden", err)
	}
}

func mustRender(t *testing.T, chart string, vals map[string]any) string {
	t.Helper()
	m, err := render(t, chart, vals)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type applier struct {
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, cfg *rest.Config) *applier {
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{
		kube:   kubernetes.NewForConfigOrDie(cfg),
		dyn:    dynamic.NewForConfigOrDie(cfg),
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco)),
	}
}

func (a *applier) applyAll(ctx context.Context, t *testing.T, objs []runtime.Object) {
	t.Helper()
	if len(objs) == 0 {
		t.Fatal("nothing rendered")
	}
	for _, o := range objs {
		if err := a.apply(ctx, o); err != nil {
			t.Errorf("apply %s: %v", kindName(o), err)
		}
	}
}

// apply server-side applies o with strict field validation: an unknown or
// duplicated field is an error, as a bad value is.
func (a *applier) apply(ctx context.Context, o runtime.Object) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: m}
	gvk := o.GetObjectKind().GroupVersionKind()
	if gvk.Empty() {
		gvks, _, err := clientScheme().ObjectKinds(o)
		if err != nil {
			return err
		}
		gvk = gvks[0]
	}
	u.SetGroupVersionKind(gvk)
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		a.mapper.Reset()
		if mapping, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return err
		}
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := u.GetNamespace()
		if ns == "" {
			return fmt.Errorf("%s %s: no namespace", gvk.Kind, u.GetName())
		}
		ri = a.dyn.Resource(mapping.Resource).Namespace(ns)
	}
	body, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	force := true
	_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		FieldManager: "chartstest", Force: &force, FieldValidation: "Strict",
	})
	return err
}

// waitCRDs waits until the base chart's CRDs are all served.
func (a *applier) waitCRDs(ctx context.Context, t *testing.T) {
	t.Helper()
	want := []schema.GroupVersionResource{
		{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
		{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"},
		{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "referencegrants"},
	}
	for _, gvr := range want {
		for {
			_, err := a.dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s never served: %v", gvr, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	a.mapper.Reset()
}

// checkControllerAccess: the permissions the controller needs, asked as
// its service account with its own token; and a few it must not have.
func checkControllerAccess(ctx context.Context, t *testing.T, cluster *kubeharness.Cluster, admin kubernetes.Interface) {
	tok, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "regomesh-controller", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	as := kubernetes.NewForConfigOrDie(cluster.RESTConfigWithToken(tok.Status.Token))
	can := func(verb, group, resource, sub string) bool {
		r, err := as.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: group, Resource: resource, Subresource: sub,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	for _, p := range controllerPermissions {
		gr, verb, _ := strings.Cut(p, ":")
		group, res, _ := strings.Cut(gr, "/")
		res, sub, _ := strings.Cut(res, "/")
		if !can(verb, group, res, sub) {
			t.Errorf("the controller's service account may not %s %s", verb, gr)
		}
	}
	// Its Lease, in its own namespace only.
	lease := func(verb, name, ns string) bool {
		r, err := as.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: "coordination.k8s.io", Resource: "leases", Name: name, Namespace: ns,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	if !lease("create", "", namespace) || !lease("get", "regomesh-controller", namespace) || !lease("update", "regomesh-controller", namespace) {
		t.Error("the controller's service account may not create, get and update its Lease")
	}
	if lease("update", "kube-scheduler", namespace) || lease("create", "", "kube-system") {
		t.Error("the controller's service account may touch Leases not its own")
	}
	for _, p := range []string{
		"get::secrets:", "list::secrets:", "update::pods:", "delete::pods:", "create:coordination.k8s.io:leases:", "update:security.istio.io:authorizationpolicies:",
		// Deploying waypoints: apply, never update, delete or read
		// everything; a Gateway's status, not the Gateway.
		"update:apps:deployments:", "delete:apps:deployments:", "list:apps:deployments:", "delete::services:", "create::configmaps:",
		"update:gateway.networking.k8s.io:gateways:", "patch:gateway.networking.k8s.io:gateways:status",
	} {
		f := strings.Split(p, ":")
		if can(f[0], f[1], f[2], f[3]) {
			t.Errorf("the controller's service account may %s %s/%s/%s", f[0], f[1], f[2], f[3])
		}
	}
	// And for real: the lists and watches its informers make.
	dyn := dynamic.NewForConfigOrDie(cluster.RESTConfigWithToken(tok.Status.Token))
	for _, gvr := range []schema.GroupVersionResource{
		{Version: "v1", Resource: "namespaces"}, {Version: "v1", Resource: "pods"}, {Version: "v1", Resource: "services"},
		{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"},
		{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
		{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
		{Group: "security.istio.io", Version: "v1", Resource: "requestauthentications"},
	} {
		if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list %s as the controller: %v", gvr, err)
		}
		w, err := dyn.Resource(gvr).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("watch %s as the controller: %v", gvr, err)
			continue
		}
		w.Stop()
	}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}).Namespace(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets as the controller: %v, want forbidden", err)
	}
}
