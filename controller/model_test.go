package controller

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func runningPod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: labels},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// What the API server tests cannot make happen easily: two pods on one
// address, a pod on an address no workload may have (every proxy would
// refuse the whole update for it), host-network pods, and a named target
// port no pod declares.
func TestBuildSnapshotLeavesOut(t *testing.T) {
	enrolled := map[string]string{"istio.io/dataplane-mode": "ambient"}
	host := runningPod("host", "192.168.0.1", enrolled)
	host.Spec.HostNetwork = true
	objs := objects{
		namespaces: map[string]*corev1.Namespace{},
		pods: []*corev1.Pod{
			runningPod("b", "10.0.0.1", enrolled),
			runningPod("a", "10.0.0.1", enrolled),
			runningPod("c", "127.0.0.9", enrolled),
			runningPod("d", "fe80::1", enrolled),
			host,
		},
		services: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "svc"},
			Spec: corev1.ServiceSpec{
				ClusterIP: "None", ClusterIPs: []string{"None"}, Selector: map[string]string{"app": "x"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}, {Port: 53, Protocol: corev1.ProtocolUDP}},
			},
		}},
	}
	snap, problems, err := buildSnapshot(objs, Config{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range snap.Workloads {
		names = append(names, w.Name)
	}
	if got := strings.Join(names, ","); got != "a" {
		t.Errorf("workloads = %s; want a (first by name on 10.0.0.1; no host-network pod)", got)
	}
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Error())
	}
	want := []string{
		`controller: service ns/svc: port 80: no selected pod declares target port "http"; using 80`,
		"controller: pod Kubernetes//Pod/ns/b: address 10.0.0.1 already belongs to Kubernetes//Pod/ns/a; left out until one of them goes",
		"controller: pod Kubernetes//Pod/ns/c: address 127.0.0.9 is a loopback address, which no workload may have; left out",
		"controller: pod Kubernetes//Pod/ns/d: address fe80::1 is a link-local address, which no workload may have; left out",
	}
	if got := strings.Join(msgs, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	svc := snap.Services[0]
	if len(svc.VIPs) != 0 || len(svc.Ports) != 1 || svc.Ports[0].TargetPort != 80 {
		t.Errorf("headless service = vips %v ports %+v; want no VIP, the TCP port only, target 80", svc.VIPs, svc.Ports)
	}
}

// A pod named as a waypoint's Gateway does not take the waypoint's place.
func TestBuildSnapshotWaypointNameTaken(t *testing.T) {
	enrolled := map[string]string{"istio.io/dataplane-mode": "ambient"}
	wpPod := runningPod("waypoint-x", "10.0.0.2", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"})
	wpPod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	objs := objects{
		namespaces: map[string]*corev1.Namespace{},
		pods:       []*corev1.Pod{runningPod("waypoint", "10.0.0.1", enrolled), wpPod},
		gateways: []*gatewayv1.Gateway{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "waypoint"},
			Spec:       gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint"},
		}},
	}
	snap, problems, err := buildSnapshot(objs, Config{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	w, ok := snap.Workload("ns", "waypoint")
	if !ok || w.UID != "Kubernetes//Pod/ns/waypoint-x" || len(snap.Workloads) != 1 {
		t.Errorf("workloads = %v; want only the waypoint, from pod waypoint-x", snap.Workloads)
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "pod Kubernetes//Pod/ns/waypoint: the name ns/waypoint belongs to a waypoint") {
		t.Errorf("problems = %v; want the pod named waypoint left out", problems)
	}
}

// sameWorkload and sameService compare every field: one they missed
// would hand a changed workload on as the last build's pointer, which the
// stream server takes as unchanged and never sends. Slices and maps
// differ in an element or value, not in length, so a comparison of
// lengths alone fails too.
func TestSameComparesEveryField(t *testing.T) {
	elements := map[reflect.Type]reflect.Value{
		reflect.TypeFor[netip.Addr]():        reflect.ValueOf(netip.MustParseAddr("10.0.0.1")),
		reflect.TypeFor[state.ServicePort](): reflect.ValueOf(state.ServicePort{Port: 80}),
	}
	for _, v := range []any{&state.Workload{}, &state.Service{}} {
		typ := reflect.TypeOf(v).Elem()
		for i := range typ.NumField() {
			a, b := reflect.New(typ), reflect.New(typ)
			fa, fb := a.Elem().Field(i), b.Elem().Field(i)
			switch fb.Kind() {
			case reflect.String:
				fb.SetString("x")
			case reflect.Slice:
				elem, ok := elements[fb.Type().Elem()]
				if !ok {
					t.Fatalf("%s.%s: a slice of %s; teach this test a value of it", typ.Name(), typ.Field(i).Name, fb.Type().Elem())
				}
				fa.Set(reflect.MakeSlice(fa.Type(), 1, 1))
				fb.Set(reflect.Append(reflect.MakeSlice(fb.Type(), 0, 1), elem))
			case reflect.Map:
				ma, mb := reflect.MakeMap(fa.Type()), reflect.MakeMap(fb.Type())
				ma.SetMapIndex(reflect.ValueOf("k"), reflect.ValueOf("v"))
				mb.SetMapIndex(reflect.ValueOf("k"), reflect.ValueOf("w"))
				fa.Set(ma)
				fb.Set(mb)
			default:
				t.Fatalf("%s.%s: a field of kind %s; teach this test to change it", typ.Name(), typ.Field(i).Name, fb.Kind())
			}
			var same bool
			switch x := a.Interface().(type) {
			case *state.Workload:
				same = sameWorkload(x, b.Interface().(*state.Workload))
			case *state.Service:
				same = sameService(x, b.Interface().(*state.Service))
			}
			if same {
				t.Errorf("%s values differing only in %s compare the same", typ.Name(), typ.Field(i).Name)
			}
		}
	}
}

// A build hands on the last build's workloads and services where they
// are equal, and new ones where they changed: the stream server encodes
// only pointers it has not seen.
func TestSnapshotsKeepUnchanged(t *testing.T) {
	objs := benchObjects(20, 2, 4, 2)
	s := newSnapshots(Config{}.withDefaults())
	first, _, err := s.build(objs)
	if err != nil {
		t.Fatal(err)
	}
	pods := slices.Clone(objs.pods)
	changed := *pods[5]
	changed.Labels = map[string]string{"app": "svc-1", "rev": "2"}
	pods[5] = &changed
	objs.pods = pods
	second, _, err := s.build(objs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first.Services, second.Services) {
		t.Error("unchanged services are new pointers")
	}
	var renewed []string
	for i, w := range second.Workloads {
		if w != first.Workloads[i] {
			renewed = append(renewed, w.Name)
		}
	}
	if got := strings.Join(renewed, ","); got != "pod-5" {
		t.Errorf("new workload pointers: %s; want pod-5 only", got)
	}
	if w, _ := second.Workload("ns-1", "pod-5"); w == nil || w.Labels["rev"] != "2" {
		t.Errorf("pod-5 = %+v; want its new labels", w)
	}

	// The same pods in a namespace no longer enrolled: the pods did not
	// change, their workloads did.
	objs.namespaces = maps.Clone(objs.namespaces)
	objs.namespaces["ns-0"] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns-0"}}
	third, _, err := s.build(objs)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range third.Workloads {
		want := state.HBONE
		if w.Namespace == "ns-0" {
			want = state.None // selected by a service, outside the mesh
		}
		if w.Protocol != want {
			t.Errorf("%s/%s: protocol %s; want %s", w.Namespace, w.Name, w.Protocol, want)
		}
		if kept := w == second.Workloads[i]; kept != (w.Namespace != "ns-0") {
			t.Errorf("%s/%s: kept the last pointer: %v", w.Namespace, w.Name, kept)
		}
	}
}

// A pod that did not change makes a new workload when what it reads
// besides itself changed: a waypoint's Gateway, a service, the pod chosen
// to serve a waypoint.
func TestSnapshotsSeeWhatPodsRead(t *testing.T) {
	readyPod := func(name, ip string, labels map[string]string) *corev1.Pod {
		p := runningPod(name, ip, labels)
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		return p
	}
	outside := runningPod("outside", "10.0.1.1", map[string]string{"app": "legacy"})
	outside.Namespace = "plain"
	gw := map[string]string{labelGatewayName: "wp"}
	wpA, wpB := readyPod("wp-a", "10.0.0.8", gw), readyPod("wp-b", "10.0.0.9", gw)
	objs := objects{
		namespaces: map[string]*corev1.Namespace{
			"ns":    {ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{labelDataplaneMode: modeAmbient, labelUseWaypoint: "wp"}}},
			"plain": {ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		},
		pods: []*corev1.Pod{runningPod("app", "10.0.0.1", nil), outside, wpA, wpB},
	}
	s := newSnapshots(Config{}.withDefaults())
	build := func(step string) *state.Snapshot {
		t.Helper()
		snap, problems, err := s.build(objs)
		if err != nil || len(problems) != 0 {
			t.Fatalf("%s: %v %v", step, err, problems)
		}
		return snap
	}
	names := func(snap *state.Snapshot) string {
		var out []string
		for _, w := range snap.Workloads {
			out = append(out, w.Namespace+"/"+w.Name+"("+w.UID[len("Kubernetes//Pod/"):]+")->"+w.Waypoint)
		}
		return strings.Join(out, " ")
	}
	check := func(step string, snap *state.Snapshot, want string) {
		t.Helper()
		if got := names(snap); got != want {
			t.Errorf("%s:\n got %s\nwant %s", step, got, want)
		}
	}

	check("no Gateway", build("no Gateway"),
		"ns/app(ns/app)-> ns/wp-a(ns/wp-a)-> ns/wp-b(ns/wp-b)->")

	objs.gateways = []*gatewayv1.Gateway{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "wp", Labels: map[string]string{labelWaypointFor: "all"}},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: waypointClass},
	}}
	check("the Gateway made", build("the Gateway made"),
		"ns/app(ns/app)->ns/wp ns/wp(ns/wp-a)->")

	objs.services = []*corev1.Service{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "plain", Name: "legacy"},
		Spec:       corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.1"}, Selector: map[string]string{"app": "legacy"}},
	}}
	snap := build("a service selecting outside")
	check("a service selecting outside", snap,
		"ns/app(ns/app)->ns/wp ns/wp(ns/wp-a)-> plain/outside(plain/outside)->")
	if w, _ := snap.Workload("plain", "outside"); w == nil || w.Protocol != state.None {
		t.Errorf("plain/outside = %+v; want a workload outside the mesh", w)
	}

	notReady := *wpA
	notReady.Status.Conditions = nil
	objs.pods = []*corev1.Pod{objs.pods[0], outside, &notReady, wpB}
	check("wp-a not ready", build("wp-a not ready"),
		"ns/app(ns/app)->ns/wp ns/wp(ns/wp-b)-> plain/outside(plain/outside)->")

	forServices := *objs.gateways[0]
	forServices.Labels = map[string]string{labelWaypointFor: "service"}
	objs.gateways = []*gatewayv1.Gateway{&forServices}
	check("the Gateway for services only", build("the Gateway for services only"),
		"ns/app(ns/app)-> ns/wp(ns/wp-b)-> plain/outside(plain/outside)->")
}
