package kubeharness_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/regomesh/regomesh/controller/kubeharness"
)

const namespace = "mesh"

// One cluster, used as the controller's tests will use it: core objects
// through client-go, Istio's and the Gateway API's through their typed
// clients, and RBAC in force.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := kubeharness.New(t, kubeharness.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kube := kubernetes.NewForConfigOrDie(cluster.RESTConfig())
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   namespace,
		Labels: map[string]string{"istio.io/dataplane-mode": "ambient"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("pod status set as a kubelet sets it", func(t *testing.T) { testPodStatus(t, ctx, kube) })
	t.Run("AuthorizationPolicy through istio.io/client-go", func(t *testing.T) { testAuthorizationPolicy(t, ctx, cluster) })
	t.Run("schema of the Istio CRD enforced", func(t *testing.T) { testIstioSchema(t, ctx, cluster) })
	t.Run("Gateway through the Gateway API client", func(t *testing.T) { testGateway(t, ctx, cluster) })
	t.Run("RBAC denies a token with no bindings", func(t *testing.T) { testRBAC(t, ctx, cluster, kube) })
}

func testPodStatus(t *testing.T, ctx context.Context, kube kubernetes.Interface) {
	pods := kube.CoreV1().Pods(namespace)
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:           "node1",
			ServiceAccountName: "web",
			Containers:         []corev1.Container{{Name: "web", Image: "example.invalid/web"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.PodIP != "" || pod.Status.Phase != corev1.PodPending {
		t.Errorf("a new pod has podIP %q, phase %q; want none and Pending", pod.Status.PodIP, pod.Status.Phase)
	}
	pod.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  "10.1.0.9",
		PodIPs: []corev1.PodIP{{IP: "10.1.0.9"}},
		HostIP: "192.168.0.1",
	}
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := pods.Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != corev1.PodRunning || got.Status.PodIP != "10.1.0.9" || len(got.Status.PodIPs) != 1 {
		t.Errorf("status read back = phase %q, podIP %q, podIPs %v; want Running, 10.1.0.9", got.Status.Phase, got.Status.PodIP, got.Status.PodIPs)
	}
	if got.Spec.NodeName != "node1" || got.Spec.ServiceAccountName != "web" {
		t.Errorf("spec read back = node %q, service account %q; want node1, web", got.Spec.NodeName, got.Spec.ServiceAccountName)
	}
}

func testAuthorizationPolicy(t *testing.T, ctx context.Context, cluster *kubeharness.Cluster) {
	istio := istioclient.NewForConfigOrDie(cluster.RESTConfig())
	policies := istio.SecurityV1().AuthorizationPolicies(namespace)
	_, err := policies.Create(ctx, &istiosecurity.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-client"},
		Spec: securityv1beta1.AuthorizationPolicy{
			Action: securityv1beta1.AuthorizationPolicy_ALLOW,
			Rules: []*securityv1beta1.Rule{{
				From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
					Principals: []string{"regomesh.test/ns/mesh/sa/client"},
				}}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := policies.Get(ctx, "allow-client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.GetAction() != securityv1beta1.AuthorizationPolicy_ALLOW || len(got.Spec.GetRules()) != 1 ||
		strings.Join(got.Spec.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals(), ",") != "regomesh.test/ns/mesh/sa/client" {
		t.Errorf("AuthorizationPolicy read back = %v", &got.Spec)
	}
	// The other two security CRDs are served as well.
	if _, err := istio.SecurityV1().PeerAuthentications(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list PeerAuthentications: %v", err)
	}
	if _, err := istio.SecurityV1().RequestAuthentications(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list RequestAuthentications: %v", err)
	}
}

// The CRDs come with their schemas: an action Istio does not know is
// refused by the API server, not stored.
func testIstioSchema(t *testing.T, ctx context.Context, cluster *kubeharness.Cluster) {
	client := dynamic.NewForConfigOrDie(cluster.RESTConfig())
	resource := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1",
		"kind":       "AuthorizationPolicy",
		"metadata":   map[string]any{"name": "bogus-action"},
		"spec":       map[string]any{"action": "PERMIT"},
	}}
	_, err := client.Resource(resource).Namespace(namespace).Create(ctx, policy, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.action") {
		t.Errorf("creating an AuthorizationPolicy with action PERMIT = %v; want Invalid on spec.action", err)
	}
}

func testGateway(t *testing.T, ctx context.Context, cluster *kubeharness.Cluster) {
	gateways := gatewayclient.NewForConfigOrDie(cluster.RESTConfig()).GatewayV1()
	_, err := gateways.GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint"},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: "istio.io/mesh-controller"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = gateways.Gateways(namespace).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := gateways.Gateways(namespace).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.GatewayClassName != "istio-waypoint" || len(got.Spec.Listeners) != 1 || got.Spec.Listeners[0].Port != 15008 {
		t.Errorf("Gateway read back = %+v", got.Spec)
	}
	// The CRD's schema defaults a listener's allowed routes, as in a cluster.
	if routes := got.Spec.Listeners[0].AllowedRoutes; routes == nil || routes.Namespaces == nil ||
		routes.Namespaces.From == nil || *routes.Namespaces.From != gatewayv1.NamespacesFromSame {
		t.Errorf("listener's allowedRoutes = %+v; want the schema's default, namespaces from Same", routes)
	}
	if _, err := gateways.HTTPRoutes(namespace).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list HTTPRoutes: %v", err)
	}
}

// A service account's token authenticates but, with no binding, may do
// nothing; a binding lets it; an unknown token does not authenticate.
func testRBAC(t *testing.T, ctx context.Context, cluster *kubeharness.Cluster, kube kubernetes.Interface) {
	if _, err := kube.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "reader", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reader := kubernetes.NewForConfigOrDie(cluster.RESTConfigWithToken(token.Status.Token))
	listPods := func() error {
		_, err := reader.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		return err
	}
	if err := listPods(); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "system:serviceaccount:mesh:reader") {
		t.Errorf("listing pods with an unbound token = %v; want Forbidden for system:serviceaccount:mesh:reader", err)
	}

	stranger := kubernetes.NewForConfigOrDie(cluster.RESTConfigWithToken("not-a-token"))
	if _, err := stranger.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("listing pods with an unknown token = %v; want Unauthorized", err)
	}

	bindPodReader(t, ctx, kube)
	// RBAC reads bindings from an informer: allow it a moment.
	deadline := time.Now().Add(20 * time.Second)
	for err = listPods(); err != nil && time.Now().Before(deadline); err = listPods() {
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("listing pods once a RoleBinding allows it = %v", err)
	}
}

func bindPodReader(t *testing.T, ctx context.Context, kube kubernetes.Interface) {
	t.Helper()
	rbac := kube.RbacV1()
	if _, err := rbac.Roles(namespace).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: namespace}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Close leaves no process and no directory behind, and a second Close is
// harmless.
func TestCloseStopsEverything(t *testing.T) {
	t.Parallel()
	cluster := start(t)
	pids, dir := cluster.PIDs(), cluster.Dir()
	if len(pids) != 2 {
		t.Errorf("PIDs() = %v; want etcd's and kube-apiserver's", pids)
	}
	if err := cluster.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d after Close: kill -0 = %v; want ESRCH", pid, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s after Close: %v; want it removed", dir, err)
	}
	if err := cluster.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestMissingBinaries(t *testing.T) {
	_, err := kubeharness.Start(context.Background(), kubeharness.Config{BinDir: "/nonexistent"})
	if !errors.Is(err, kubeharness.ErrNoBinaries) || !strings.Contains(err.Error(), "make kube") {
		t.Errorf("Start without binaries = %v; want ErrNoBinaries saying to run make kube", err)
	}
}

// A Start that fails part way returns its error and cleans up what it
// started, without panicking on its own failed result.
func TestStartFailsCleanly(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "missing")
	_, err := kubeharness.Start(context.Background(), kubeharness.Config{Dir: dir})
	if errors.Is(err, kubeharness.ErrNoBinaries) {
		t.Skip(err)
	}
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Start in a missing directory = %v; want an error naming %s", err, dir)
	}
}

// A port taken between the pick and the child's bind (by a test running
// beside this one) costs one more try, not the test: the first ports
// handed out here are held by a listener, and Start still comes up, on
// other ports. Not parallel: it replaces the package's port picker.
func TestStartRetriesTakenPorts(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	var picks atomic.Int32
	defer kubeharness.SetPickPorts(func(n int) ([]int, error) {
		if picks.Add(1) > 1 {
			return kubeharness.FreePorts(n)
		}
		ports, err := kubeharness.FreePorts(n)
		if err == nil {
			ports[0] = taken // etcd's client port
		}
		return ports, err
	})()
	cluster := start(t)
	defer cluster.Close()
	if !strings.Contains(cluster.EtcdLogs(), "address already in use") {
		t.Errorf("etcd's log does not show the taken port %d; the first attempt did not meet it:\n%s", taken, cluster.EtcdLogs())
	}
	if got := picks.Load(); got != 4 {
		t.Errorf("ports picked %d times; want 4 (etcd's and the API server's, twice)", got)
	}
	if host := cluster.RESTConfig().Host; strings.HasSuffix(host, ":"+strconv.Itoa(taken)) {
		t.Errorf("API server at %s, the taken port", host)
	}
	kube := kubernetes.NewForConfigOrDie(cluster.RESTConfig())
	if _, err := kube.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{}); err != nil {
		t.Errorf("the cluster started on the second try does not answer: %v", err)
	}
}

// start starts a cluster with Start, which the test closes itself, and
// skips the test when the binaries are missing.
func start(t *testing.T) *kubeharness.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err := kubeharness.Start(ctx, kubeharness.Config{})
	if errors.Is(err, kubeharness.ErrNoBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cluster
}
