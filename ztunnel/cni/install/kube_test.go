package install

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/regomesh/regomesh/controller/kubeharness"
)

// DaemonSetGone against a real API server: present is a restart; being
// deleted (held by a finalizer here) or gone is an uninstall.
func TestDaemonSetGone(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	kube := kubernetes.NewForConfigOrDie(cluster.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	labels := map[string]string{"app": "regomesh-cni"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "regomesh-cni", Namespace: "default", Finalizers: []string{"regomesh.test/hold"}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "install", Image: "regomesh-cni"}}},
			},
		},
	}
	if _, err := kube.AppsV1().DaemonSets("default").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gone := DaemonSetGone(kube, "default", "regomesh-cni")
	check := func(when string, want bool) {
		t.Helper()
		got, err := gone(ctx)
		if err != nil || got != want {
			t.Fatalf("%s: DaemonSetGone = %v, %v; want %v", when, got, err, want)
		}
	}
	check("while the DaemonSet stands", false)
	if err := kube.AppsV1().DaemonSets("default").Delete(ctx, "regomesh-cni", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("while the DaemonSet is being deleted", true)
	patch := []byte(`{"metadata":{"finalizers":null}}`)
	if _, err := kube.AppsV1().DaemonSets("default").Patch(ctx, "regomesh-cni", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	check("once the DaemonSet is gone", true)

	// No access (a token the API server does not know): cannot tell.
	stranger := kubernetes.NewForConfigOrDie(cluster.RESTConfigWithToken("not-a-token"))
	if got, err := DaemonSetGone(stranger, "default", "regomesh-cni")(ctx); err == nil {
		t.Fatalf("DaemonSetGone without access = %v, nil; want an error, so that the plugin stays", got)
	}
}
