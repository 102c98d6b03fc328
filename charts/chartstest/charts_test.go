package chartstest

import (
	"bufio"
	"bytes"
	"maps"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func TestLint(t *testing.T) {
	cases := map[string][]string{"regomesh": valueSets, "regomesh-base": {"defaults"}}
	for chart, sets := range cases {
		for _, set := range sets {
			t.Run(chart+"/"+set, func(t *testing.T) {
				lint := action.NewLint()
				lint.Strict = true
				lint.Namespace = namespace
				lint.KubeVersion = kubeVersion
				res := lint.Run([]string{chartDir(chart)}, values(t, set))
				for _, m := range res.Messages {
					if m.Severity >= support.WarningSev {
						t.Errorf("lint: %s", m)
					}
				}
				for _, err := range res.Errors {
					t.Errorf("lint: %v", err)
				}
			})
		}
	}
}

// TestLabels: every object and pod template has the standard labels.
func TestLabels(t *testing.T) {
	want := []string{
		"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
		"app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
		"helm.sh/chart",
	}
	for _, set := range valueSets {
		objs := objects(t, "regomesh", values(t, set))
		for _, o := range objs {
			m, ok := o.(metav1.Object)
			if !ok {
				t.Fatalf("%s: no metadata", kindName(o))
			}
			check := func(where string, labels map[string]string) {
				for _, k := range want {
					if labels[k] == "" {
						t.Errorf("%s: %s: %s %s has no label %s", set, where, kindName(o), m.GetName(), k)
					}
				}
				if labels["app.kubernetes.io/part-of"] != "regomesh" || labels["app.kubernetes.io/instance"] != "regomesh" {
					t.Errorf("%s: %s %s labels %v", set, kindName(o), where, labels)
				}
			}
			check("metadata", m.GetLabels())
			if spec := podSpecOf(o); spec != nil {
				check("pod template", spec.Labels)
			}
		}
	}
}

func podSpecOf(o runtime.Object) *corev1.PodTemplateSpec {
	switch v := o.(type) {
	case *appsv1.Deployment:
		return &v.Spec.Template
	case *appsv1.DaemonSet:
		return &v.Spec.Template
	}
	return nil
}

// TestZtunnelPrivileges: exactly the capabilities in-pod capture needs,
// never privileged, no host namespaces, and the mounts it uses.
func TestZtunnelPrivileges(t *testing.T) {
	for _, set := range valueSets {
		ds := one[*appsv1.DaemonSet](t, objects(t, "regomesh", values(t, set)), "ztunnel")
		spec := ds.Spec.Template.Spec
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			t.Errorf("%s: ztunnel shares a host namespace: network %v pid %v ipc %v", set, spec.HostNetwork, spec.HostPID, spec.HostIPC)
		}
		if len(spec.InitContainers) != 0 || len(spec.Containers) != 1 {
			t.Fatalf("%s: ztunnel pod has %d init containers and %d containers, want 0 and 1", set, len(spec.InitContainers), len(spec.Containers))
		}
		c := spec.Containers[0]
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Fatalf("%s: ztunnel has no security context with capabilities", set)
		}
		if sc.Privileged == nil || *sc.Privileged {
			t.Errorf("%s: ztunnel privileged = %v, want an explicit false", set, sc.Privileged)
		}
		if got := caps(sc.Capabilities.Add); !slices.Equal(got, []string{"NET_ADMIN", "SYS_ADMIN"}) {
			t.Errorf("%s: ztunnel adds capabilities %v, want exactly [NET_ADMIN SYS_ADMIN]", set, got)
		}
		if got := caps(sc.Capabilities.Drop); !slices.Equal(got, []string{"ALL"}) {
			t.Errorf("%s: ztunnel drops %v, want [ALL]", set, got)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: ztunnel may escalate privileges", set)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: ztunnel's root filesystem is writable", set)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: ztunnel seccomp %v, want RuntimeDefault", set, sc.SeccompProfile)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: ztunnel mounts a service account token it never uses", set)
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m
		}
		for path, readOnly := range map[string]bool{
			"/run/spire/agent/public": true, "/run/spire/admin": true, "/var/run/regomesh": false, "/var/run/netns": true,
		} {
			m, ok := mounts[path]
			if !ok {
				t.Errorf("%s: ztunnel does not mount %s", set, path)
			} else if m.ReadOnly != readOnly {
				t.Errorf("%s: ztunnel mounts %s read-only %v, want %v", set, path, m.ReadOnly, readOnly)
			}
		}
		if p := mounts["/var/run/netns"].MountPropagation; p == nil || *p != corev1.MountPropagationHostToContainer {
			t.Errorf("%s: /var/run/netns propagation %v, want HostToContainer", set, p)
		}
		args := argMap(c.Args)
		for flag, want := range map[string]string{
			"spire-admin-socket":    "/run/spire/admin/" + str(values(t, set), "spire", "adminSocketName", "admin.sock"),
			"spire-workload-socket": "/run/spire/agent/public/" + str(values(t, set), "spire", "workloadSocketName", "spire-agent.sock"),
			"cni-socket":            "/var/run/regomesh/ztunnel.sock",
			"controller":            "regomesh-controller.regomesh-system.svc." + str(values(t, set), "global", "clusterDomain", "cluster.local") + ":15012",
			"controller-identity":   "spiffe://" + str(values(t, set), "global", "trustDomain", "cluster.local") + "/ns/regomesh-system/sa/regomesh-controller",
		} {
			if args[flag] != want {
				t.Errorf("%s: ztunnel --%s=%q, want %q", set, flag, args[flag], want)
			}
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Errorf("%s: ztunnel has no NODE_NAME from spec.nodeName", set)
		}
	}
}

// TestCNIInstaller: the CNI installer's DaemonSet runs as root with no
// capability, mounts the node's two CNI directories and nothing else of
// the host, may read its own DaemonSet and nothing else, and is left out
// when cni.enabled is false.
func TestCNIInstaller(t *testing.T) {
	for _, set := range valueSets {
		vals := values(t, set)
		objs := objects(t, "regomesh", vals)
		ds := one[*appsv1.DaemonSet](t, objs, "regomesh-cni")
		spec := ds.Spec.Template.Spec
		if spec.HostNetwork || spec.HostPID || spec.HostIPC || len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
			t.Fatalf("%s: regomesh-cni pod: host namespaces %v/%v/%v, %d containers, %d init containers; want none, 1, 0",
				set, spec.HostNetwork, spec.HostPID, spec.HostIPC, len(spec.Containers), len(spec.InitContainers))
		}
		c := spec.Containers[0]
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 ||
			!slices.Equal(caps(sc.Capabilities.Drop), []string{"ALL"}) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Errorf("%s: regomesh-cni security context %+v: want root with no capability, no escalation, read-only root", set, sc)
		}
		hostPaths := map[string]string{}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				hostPaths[v.Name] = v.HostPath.Path
			}
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = hostPaths[m.Name]
		}
		want := map[string]string{
			"/host/opt/cni/bin":   str(vals, "cni", "binDir", "/opt/cni/bin"),
			"/host/etc/cni/net.d": str(vals, "cni", "confDir", "/etc/cni/net.d"),
		}
		if !maps.Equal(mounts, want) || len(hostPaths) != 2 {
			t.Errorf("%s: regomesh-cni mounts %v of host paths %v, want exactly %v", set, mounts, hostPaths, want)
		}
		args := argMap(c.Args)
		if got, want := args["ztunnel-socket"], str(vals, "ztunnel", "runDir", "/var/run/regomesh")+"/ztunnel.sock"; got != want {
			t.Errorf("%s: --ztunnel-socket=%q, want ztunnel's %q", set, got, want)
		}
		if args["daemonset"] != ds.Name {
			t.Errorf("%s: --daemonset=%q, want its own DaemonSet %q", set, args["daemonset"], ds.Name)
		}
		role := one[*rbacv1.Role](t, objs, "regomesh-cni")
		if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, []string{"get"}) || !slices.Equal(role.Rules[0].Resources, []string{"daemonsets"}) ||
			!slices.Equal(role.Rules[0].ResourceNames, []string{ds.Name}) {
			t.Errorf("%s: regomesh-cni's Role %+v, want get on its own DaemonSet only", set, role.Rules)
		}
	}
	for _, o := range objects(t, "regomesh", map[string]any{"cni": map[string]any{"enabled": false}}) {
		if nameOf(o) == "regomesh-cni" {
			t.Errorf("cni.enabled=false still renders %s", kindName(o))
		}
	}
}

// TestNonRoot: every container but ztunnel's and the CNI installer's
// (TestCNIInstaller) runs as non-root with nothing added, all capabilities
// dropped and a read-only root.
func TestNonRoot(t *testing.T) {
	for _, set := range valueSets {
		objs := objects(t, "regomesh", values(t, set))
		// and the waypoint the controller deploys from the chart's template
		objs = append(objs, waypointObjects(t, values(t, set), "bookinfo", "flags-waypoint")...)
		for _, o := range objs {
			spec := podSpecOf(o)
			if spec == nil || nameOf(o) == "ztunnel" || nameOf(o) == "regomesh-cni" {
				continue
			}
			for _, c := range spec.Spec.Containers {
				sc := c.SecurityContext
				if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil ||
					len(sc.Capabilities.Add) != 0 || !slices.Equal(caps(sc.Capabilities.Drop), []string{"ALL"}) ||
					sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
					sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s: %s container %s: security context %+v is not restricted", set, kindName(o), c.Name, sc)
				}
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
					t.Errorf("%s: %s container %s has no resource requests", set, kindName(o), c.Name)
				}
			}
		}
	}
}

// TestControllerRBAC: what the controller's informers list and watch,
// AuthorizationPolicy status and Events (on ConfigMaps of user Rego
// refused), nothing more.
func TestControllerRBAC(t *testing.T) {
	objs := objects(t, "regomesh", nil)
	roles := find[*rbacv1.ClusterRole](objs, "")
	if len(roles) != 1 {
		t.Fatalf("%d ClusterRoles, want 1 (the controller's)", len(roles))
	}
	if rs := find[*rbacv1.Role](objs, ""); len(rs) != 2 {
		t.Errorf("%d Roles, want two: the CNI installer's (TestCNIInstaller) and the controller's Lease", len(rs))
	}
	leader := one[*rbacv1.Role](t, objs, "regomesh-controller-leader")
	var leases []string
	for _, r := range leader.Rules {
		for _, v := range r.Verbs {
			leases = append(leases, strings.Join(r.APIGroups, ",")+"/"+strings.Join(r.Resources, ",")+":"+v+"@"+strings.Join(r.ResourceNames, ","))
		}
	}
	slices.Sort(leases)
	if want := []string{"coordination.k8s.io/leases:create@", "coordination.k8s.io/leases:get@regomesh-controller", "coordination.k8s.io/leases:update@regomesh-controller"}; !slices.Equal(leases, want) {
		t.Errorf("the controller's Lease Role grants %v, want %v", leases, want)
	}
	lb := one[*rbacv1.RoleBinding](t, objs, "regomesh-controller-leader")
	if lb.RoleRef.Name != leader.Name || len(lb.Subjects) != 1 || lb.Subjects[0].Name != "regomesh-controller" {
		t.Errorf("Lease binding %+v does not bind the controller's service account", lb)
	}
	var got []string
	for _, r := range roles[0].Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, g+"/"+res+":"+v)
				}
			}
		}
		if len(r.ResourceNames) != 0 || len(r.NonResourceURLs) != 0 {
			t.Errorf("rule %+v names resources or URLs", r)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, controllerPermissions) {
		t.Errorf("controller's ClusterRole grants\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(controllerPermissions, "\n"))
	}
	b := one[*rbacv1.ClusterRoleBinding](t, objs, roles[0].Name)
	if b.RoleRef.Name != roles[0].Name || len(b.Subjects) != 1 || b.Subjects[0].Name != "regomesh-controller" || b.Subjects[0].Namespace != namespace {
		t.Errorf("binding %+v does not bind the controller's service account", b)
	}
}

// controllerPermissions, sorted: group/resource:verb.
var controllerPermissions = []string{
	"/configmaps:list", "/configmaps:watch",
	"/events:create",
	"/namespaces:list", "/namespaces:watch",
	"/pods:list", "/pods:watch",
	"/serviceaccounts:create", "/serviceaccounts:get", "/serviceaccounts:patch",
	"/services:create", "/services:get", "/services:list", "/services:patch", "/services:watch",
	"apps/deployments:create", "apps/deployments:get", "apps/deployments:patch",
	"autoscaling/horizontalpodautoscalers:create", "autoscaling/horizontalpodautoscalers:get", "autoscaling/horizontalpodautoscalers:patch",
	"gateway.networking.k8s.io/gateways/status:update",
	"gateway.networking.k8s.io/gateways:list", "gateway.networking.k8s.io/gateways:watch",
	"policy/poddisruptionbudgets:create", "policy/poddisruptionbudgets:get", "policy/poddisruptionbudgets:patch",
	"security.istio.io/authorizationpolicies/status:update",
	"security.istio.io/authorizationpolicies:list", "security.istio.io/authorizationpolicies:watch",
	"security.istio.io/peerauthentications:list", "security.istio.io/peerauthentications:watch",
	"security.istio.io/requestauthentications:list", "security.istio.io/requestauthentications:watch",
}

// waypointPermissions are those of controllerPermissions that deploying
// waypoints needs (controller.deployWaypoints): server-side apply of the
// waypoint's kinds, and Gateway status.
var waypointPermissions = []string{
	"/serviceaccounts:create", "/serviceaccounts:get", "/serviceaccounts:patch",
	"/services:create", "/services:get", "/services:patch",
	"apps/deployments:create", "apps/deployments:get", "apps/deployments:patch",
	"autoscaling/horizontalpodautoscalers:create", "autoscaling/horizontalpodautoscalers:get", "autoscaling/horizontalpodautoscalers:patch",
	"gateway.networking.k8s.io/gateways/status:update",
	"policy/poddisruptionbudgets:create", "policy/poddisruptionbudgets:get", "policy/poddisruptionbudgets:patch",
}

func TestControllerShape(t *testing.T) {
	for _, set := range valueSets {
		objs := objects(t, "regomesh", values(t, set))
		d := one[*appsv1.Deployment](t, objs, "regomesh-controller")
		want := int32(1)
		if set == "ha" {
			want = 3
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != want {
			t.Errorf("%s: controller replicas %v, want %d", set, d.Spec.Replicas, want)
		}
		c := d.Spec.Template.Spec.Containers[0]
		if args := argMap(c.Args); args["leader-elect"] != "" || !slices.Contains(c.Args, "--leader-elect") {
			t.Errorf("%s: controller args %v: want --leader-elect, so that one replica writes status", set, c.Args)
		}
		for _, env := range []string{"POD_NAME", "POD_NAMESPACE"} {
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil }) {
				t.Errorf("%s: controller has no %s from the downward API (--leader-elect's defaults)", set, env)
			}
		}
		pdbs := find[*policyv1.PodDisruptionBudget](objs, "regomesh-controller")
		if set == "custom" {
			if len(pdbs) != 0 {
				t.Errorf("%s: a PDB although podDisruptionBudget.enabled is false", set)
			}
		} else if len(pdbs) != 1 || pdbs[0].Spec.MaxUnavailable == nil || pdbs[0].Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("%s: controller PDB %v, want one of maxUnavailable 1", set, pdbs)
		}
		svc := one[*corev1.Service](t, objs, "regomesh-controller")
		if len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Port != 15012 || svc.Spec.Ports[1].Port != 15013 {
			t.Errorf("%s: controller Service ports %+v, want 15012 (state) and 15013 (bundles)", set, svc.Spec.Ports)
		}
		if got := argMap(d.Spec.Template.Spec.Containers[0].Args)["xds-addr"]; got != ":15012" {
			t.Errorf("%s: --xds-addr=%q", set, got)
		}
		if set == "custom" {
			spec := d.Spec.Template.Spec
			if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "regcred" {
				t.Errorf("custom: pull secrets %v", spec.ImagePullSecrets)
			}
			if img := spec.Containers[0].Image; img != "registry.example.org/mesh/regomesh-controller:v0.1.0-rc.1" {
				t.Errorf("custom: image %s", img)
			}
		}
	}
}

func TestWaypoints(t *testing.T) {
	if n := len(find[*appsv1.Deployment](objects(t, "regomesh", nil), "reviews-waypoint")); n != 0 {
		t.Fatalf("defaults render %d waypoints, want none", n)
	}
	objs := objects(t, "regomesh", values(t, "waypoints"))
	d := one[*appsv1.Deployment](t, objs, "reviews-waypoint")
	if d.Namespace != "bookinfo" || d.Spec.Replicas != nil {
		t.Errorf("reviews-waypoint: namespace %s replicas %v, want bookinfo and none (the HPA's)", d.Namespace, d.Spec.Replicas)
	}
	args := argMap(d.Spec.Template.Spec.Containers[0].Args)
	if args["gateway"] != "bookinfo/reviews-waypoint" || args["hbone-addr"] != ":15008" || args["verification-key"] == "" {
		t.Errorf("reviews-waypoint args %v", args)
	}
	hpa := one[*autoscalingv2.HorizontalPodAutoscaler](t, objs, "reviews-waypoint")
	if hpa.Spec.ScaleTargetRef.Name != "reviews-waypoint" || *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 10 {
		t.Errorf("reviews-waypoint HPA %+v", hpa.Spec)
	}
	r := one[*appsv1.Deployment](t, objs, "ratings-waypoint")
	if r.Spec.Replicas == nil || *r.Spec.Replicas != 3 || r.Spec.Template.Spec.ServiceAccountName != "ratings-wp" {
		t.Errorf("ratings-waypoint replicas %v service account %s", r.Spec.Replicas, r.Spec.Template.Spec.ServiceAccountName)
	}
	if n := len(find[*autoscalingv2.HorizontalPodAutoscaler](objs, "ratings-waypoint")); n != 0 {
		t.Errorf("ratings-waypoint has %d HPAs with autoscaling off", n)
	}
	one[*corev1.ServiceAccount](t, objs, "ratings-wp")
}

func TestBaseCRDs(t *testing.T) {
	for _, c := range []struct {
		vals map[string]any
		want int
	}{
		{nil, 13},
		{map[string]any{"crds": map[string]any{"enabled": false}}, 0},
		{map[string]any{"crds": map[string]any{"gatewayAPI": false}}, 3},
	} {
		objs := objects(t, "regomesh-base", c.vals)
		crds := find[*apiextensionsv1.CustomResourceDefinition](objs, "")
		if len(crds) != c.want || len(objs) != c.want {
			t.Errorf("values %v: %d objects, %d CRDs, want %d", c.vals, len(objs), len(crds), c.want)
		}
		for _, crd := range crds {
			if crd.Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("CRD %s is not kept on uninstall", crd.Name)
			}
		}
	}
}

// TestSchemaRejects: values.schema.json refuses bad values, naming them.
func TestSchemaRejects(t *testing.T) {
	for _, c := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{"global": map[string]any{"trustDomain": "Prod Example"}}, "trustDomain"},
		{map[string]any{"global": map[string]any{"logLevel": "verbose"}}, "logLevel"},
		{map[string]any{"controller": map[string]any{"replicas": 0}}, "replicas"},
		{map[string]any{"controller": map[string]any{"debounce": "soon"}}, "debounce"},
		{map[string]any{"ztunnel": map[string]any{"privileged": true}}, "privileged"},
		{map[string]any{"waypoints": map[string]any{"instances": []any{map[string]any{"name": "w", "namespace": "ns"}}}}, "gateway"},
		{map[string]any{"spire": map[string]any{"adminSocketDir": "relative/dir"}}, "adminSocketDir"},
		// A key on one side only: every proxy would stay unready.
		{map[string]any{"policy": map[string]any{"signingKeySecret": "k"}}, "policy.verificationKeySecret is not"},
		{map[string]any{"policy": map[string]any{"verificationKeySecret": "k"}}, "policy.signingKeySecret is not"},
	} {
		_, err := render(t, "regomesh", c.vals)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %v: error %v, want one naming %s", c.vals, err, c.want)
		}
	}
}

// TestFlags: every flag the charts pass is one the binary accepts, as its
// -h lists them.
func TestFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	t.Parallel()
	for _, set := range valueSets {
		objs := objects(t, "regomesh", values(t, set))
		// and the waypoint the controller deploys from the chart's template
		objs = append(objs, waypointObjects(t, values(t, set), "bookinfo", "flags-waypoint")...)
		for _, o := range objs {
			spec := podSpecOf(o)
			if spec == nil {
				continue
			}
			for _, c := range spec.Spec.Containers {
				bin := map[string]string{"controller": "regomesh-controller", "ztunnel": "ztunnel", "waypoint": "waypoint", "install-cni": "regomesh-cni-install"}[c.Name]
				if bin == "" {
					t.Fatalf("%s: container %s runs no known binary", kindName(o), c.Name)
				}
				known := flagsOf(t, bin)
				for _, a := range c.Args {
					name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
					if !strings.HasPrefix(a, "--") || !known[name] {
						t.Errorf("%s: %s: %s does not take %q", set, kindName(o), bin, a)
					}
				}
			}
		}
	}
}

// chartBinaries are the binaries the charts' containers run.
var chartBinaries = []string{"regomesh-controller", "ztunnel", "waypoint", "regomesh-cni-install"}

var (
	flagsMu    sync.Mutex
	flagsCache map[string]map[string]bool
)

// flagsOf reads cmd/<bin>'s flags from its -h. The first call builds every
// binary in chartBinaries, in one go build that links them side by side,
// and reads all their flags.
func flagsOf(t *testing.T, bin string) map[string]bool {
	t.Helper()
	flagsMu.Lock()
	defer flagsMu.Unlock()
	if flagsCache == nil {
		dir := t.TempDir()
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		for _, b := range chartBinaries {
			args = append(args, "./cmd/"+b)
		}
		// In the environment the tests run in, not CGO_ENABLED=0 as
		// the images build: only the flags are read, and the packages
		// are then those `make test`'s go vet compiled. Built for
		// another configuration, on a machine with a cold cache, the
		// dependencies compiled here for nine minutes beside the other
		// tests and the package timed out.
		build := exec.Command("go", args...)
		build.Dir = repoRoot()
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %v: %v\n%s", chartBinaries, err, b)
		}
		cache := map[string]map[string]bool{}
		for _, b := range chartBinaries {
			cache[b] = helpFlags(t, filepath.Join(dir, b))
		}
		flagsCache = cache
	}
	flags, ok := flagsCache[bin]
	if !ok {
		t.Fatalf("%s is not in chartBinaries", bin)
	}
	return flags
}

// helpFlags runs a binary with -h and returns the flags it lists.
func helpFlags(t *testing.T, path string) map[string]bool {
	t.Helper()
	var help bytes.Buffer
	cmd := exec.Command(path, "-h")
	cmd.Stdout, cmd.Stderr = &help, &help
	_ = cmd.Run() // -h exits 0 or 2, as flag's ContinueOnError makes it
	flags := map[string]bool{}
	re := regexp.MustCompile(`^\s+-{1,2}([a-z0-9][a-z0-9-]*)`)
	sc := bufio.NewScanner(&help)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) < 5 {
		t.Fatalf("%s -h lists %d flags:\n%s", filepath.Base(path), len(flags), help.String())
	}
	return flags
}

func caps(cs []corev1.Capability) []string {
	var out []string
	for _, c := range cs {
		out = append(out, string(c))
	}
	slices.Sort(out)
	return out
}

func argMap(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		m[k] = v
	}
	return m
}

// str is vals[a][b], or def.
func str(vals map[string]any, a, b, def string) string {
	if m, ok := vals[a].(map[string]any); ok {
		if s, ok := m[b].(string); ok {
			return s
		}
	}
	return def
}
