package chartstest

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/diff"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/regomesh/regomesh/controller"
)

// waypointTemplate is the template the chart gives the controller with
// vals (the regomesh-waypoint-template ConfigMap), as the controller
// parses it.
func waypointTemplate(t testing.TB, vals map[string]any) *controller.WaypointTemplate {
	t.Helper()
	cm := one[*corev1.ConfigMap](t, objects(t, "regomesh", vals), "regomesh-waypoint-template")
	tmpl, err := controller.ParseWaypointTemplate(cm.Data["waypoint.yaml"])
	if err != nil {
		t.Fatalf("the controller refuses the chart's waypoint template: %v", err)
	}
	return tmpl
}

// waypointObjects are the objects the controller would apply for the
// Gateway namespace/name with the chart's template, typed.
func waypointObjects(t testing.TB, vals map[string]any, namespace, name string) []runtime.Object {
	t.Helper()
	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: "6e1d3c1a-0000-4000-8000-000000000001"}}
	gw.Spec.GatewayClassName = "istio-waypoint"
	us, err := waypointTemplate(t, vals).Render(gw)
	if err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for _, u := range us {
		o, err := clientScheme().New(u.GroupVersionKind())
		if err != nil {
			t.Fatal(err)
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, o, true); err != nil {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		out = append(out, o)
	}
	return out
}

// The controller's waypoint is the chart's: for the Gateway a
// waypoints.instances entry serves, the template makes the same
// container (image, args, ports, security context, resources, mounts)
// and the same pod volumes, so the two cannot drift apart.
func TestWaypointTemplateMatchesWaypoints(t *testing.T) {
	vals := values(t, "waypoints")
	listed := one[*appsv1.Deployment](t, objects(t, "regomesh", vals), "reviews-waypoint").Spec.Template.Spec
	deployed := one[*appsv1.Deployment](t, waypointObjects(t, vals, "bookinfo", "reviews-waypoint"), "reviews-waypoint").Spec.Template.Spec
	if !equality.Semantic.DeepEqual(listed.Containers, deployed.Containers) {
		t.Errorf("the waypoint template's container differs from waypoints.yaml's (keep templates/waypoint-template.yaml in step) (-listed +template):\n%s", diff.Diff(listed.Containers, deployed.Containers))
	}
	if !equality.Semantic.DeepEqual(listed.Volumes, deployed.Volumes) {
		t.Errorf("the waypoint template's volumes differ from waypoints.yaml's (-listed +template):\n%s", diff.Diff(listed.Volumes, deployed.Volumes))
	}
	if listed.SecurityContext == nil || !equality.Semantic.DeepEqual(listed.SecurityContext, deployed.SecurityContext) {
		t.Errorf("pod security context: listed %+v, template %+v", listed.SecurityContext, deployed.SecurityContext)
	}
}

// What the controller applies for a Gateway with the chart's defaults:
// istiod's names, the chart's labels beside the Gateway's, an HPA on CPU
// and no replicas in the Deployment, the Service's ports as istiod's.
func TestWaypointTemplate(t *testing.T) {
	objs := waypointObjects(t, nil, "bookinfo", "reviews-waypoint")
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
		m := o.(metav1.Object)
		l := m.GetLabels()
		if l["gateway.networking.k8s.io/gateway-name"] != "reviews-waypoint" || l["app.kubernetes.io/part-of"] != "regomesh" ||
			l["app.kubernetes.io/name"] != "waypoint" || l["app.kubernetes.io/managed-by"] != "regomesh-controller" {
			t.Errorf("%s labels %v", kindName(o), l)
		}
		if m.GetNamespace() != "bookinfo" || len(m.GetOwnerReferences()) != 1 || m.GetOwnerReferences()[0].Kind != "Gateway" {
			t.Errorf("%s: namespace %s owners %v", kindName(o), m.GetNamespace(), m.GetOwnerReferences())
		}
	}
	if want := []string{"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}; !slices.Equal(kinds, want) {
		t.Errorf("kinds %v, want %v", kinds, want)
	}
	d := one[*appsv1.Deployment](t, objs, "reviews-waypoint")
	spec := d.Spec.Template.Spec
	args := argMap(spec.Containers[0].Args)
	if d.Spec.Replicas != nil || spec.ServiceAccountName != "reviews-waypoint" || args["gateway"] != "bookinfo/reviews-waypoint" ||
		args["controller"] != "regomesh-controller.regomesh-system.svc.cluster.local:15012" || args["controller-identity"] == "" {
		t.Errorf("Deployment: replicas %v, service account %s, args %v", d.Spec.Replicas, spec.ServiceAccountName, args)
	}
	if sel := d.Spec.Selector.MatchLabels; len(sel) != 1 || sel["gateway.networking.k8s.io/gateway-name"] != "reviews-waypoint" {
		t.Errorf("selector %v, want istiod's: the Gateway's name alone", sel)
	}
	if l := d.Spec.Template.Labels; l["istio.io/dataplane-mode"] != "none" || l["gateway.networking.k8s.io/gateway-name"] != "reviews-waypoint" {
		t.Errorf("pod labels %v", l)
	}
	svc := one[*corev1.Service](t, objs, "reviews-waypoint")
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Name+":"+p.TargetPort.String()+":"+*p.AppProtocol)
	}
	if want := []string{"status-port:http-ready:tcp", "mesh:tcp-hbone:all"}; !slices.Equal(ports, want) {
		t.Errorf("Service ports %v, want %v", ports, want)
	}
	hpa := one[*autoscalingv2.HorizontalPodAutoscaler](t, objs, "reviews-waypoint")
	if hpa.Spec.ScaleTargetRef.Name != "reviews-waypoint" || len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU {
		t.Errorf("HPA %+v", hpa.Spec)
	}
}

// controller.deployWaypoints false: no template, no flag, none of the
// permissions deploying needs.
func TestDeployWaypointsOff(t *testing.T) {
	objs := objects(t, "regomesh", map[string]any{"controller": map[string]any{"deployWaypoints": false}})
	if n := len(find[*corev1.ConfigMap](objs, "regomesh-waypoint-template")); n != 0 {
		t.Errorf("%d waypoint templates rendered with deployWaypoints false", n)
	}
	d := one[*appsv1.Deployment](t, objs, "regomesh-controller")
	if _, ok := argMap(d.Spec.Template.Spec.Containers[0].Args)["waypoint-template"]; ok {
		t.Error("--waypoint-template with deployWaypoints false")
	}
	var got []string
	for _, r := range one[*rbacv1.ClusterRole](t, objs, "").Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, g+"/"+res+":"+v)
				}
			}
		}
	}
	slices.Sort(got)
	want := slices.DeleteFunc(slices.Clone(controllerPermissions), func(p string) bool { return slices.Contains(waypointPermissions, p) })
	if !slices.Equal(got, want) {
		t.Errorf("with deployWaypoints false the ClusterRole grants\n%v\nwant\n%v", got, want)
	}
}
