package controller

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// The labels Istio's ambient mode reads, with its meanings.
const (
	// labelDataplaneMode "ambient" on a namespace or a pod enrols it;
	// "none" on a pod opts it out of its namespace's enrolment.
	labelDataplaneMode = "istio.io/dataplane-mode"
	// labelUseWaypoint names the waypoint (a Gateway) of a namespace's,
	// service's or pod's traffic; "none" opts out of the namespace's.
	labelUseWaypoint = "istio.io/use-waypoint"
	// labelUseWaypointNamespace is the waypoint's namespace when it is not
	// the labelled object's.
	labelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// labelWaypointFor on a waypoint's Gateway says what it serves:
	// "service" (the default), "workload", "all" or "none".
	labelWaypointFor = "istio.io/waypoint-for"
	// labelGatewayName marks the pods of a Gateway.
	labelGatewayName = "gateway.networking.k8s.io/gateway-name"

	modeAmbient = "ambient"
	modeNone    = "none"

	// waypointClass is the GatewayClass of Istio waypoints.
	waypointClass = "istio-waypoint"

	// clusterID is the cluster's name in workload UIDs, Istio's default
	// ("Kubernetes//Pod/<namespace>/<name>").
	clusterID = "Kubernetes"
)

// objects are what one build reads, as the informers hold them. A build
// modifies none of them, and each is read anew (a new namespaces map):
// snapshots compares them with the last build's by pointer.
type objects struct {
	namespaces map[string]*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	gateways   []*gatewayv1.Gateway
}

// waypoint is a Gateway of class istio-waypoint.
type waypoint struct {
	ref string // "<namespace>/<name>"
	gw  *gatewayv1.Gateway
	// forWorkloads and forServices: what istio.io/waypoint-for lets it serve.
	forWorkloads, forServices bool
}

// model builds one Snapshot from objects. Its output is deterministic:
// workloads and services sorted by namespace and name.
type model struct {
	cfg       Config
	objs      objects
	waypoints map[string]*waypoint
	problems  []error

	// made is what workload returned for each pod (nil for a pod that
	// is no workload). known is the last build's made, and context what
	// that build read besides the pods: while the context is the same, a
	// pod that is the same pointer makes the same workload, so it is
	// taken from known instead of made again.
	made    map[*corev1.Pod]*state.Workload
	known   map[*corev1.Pod]*state.Workload
	context buildContext
}

// buildContext is what a pod's workload depends on besides the pod:
// its namespace (enrolment, use-waypoint), the waypoints (their
// Gateways, and the pod serving each), and the services (selection).
// Informers replace an object that changes, never modify it, so the same
// pointers are the same objects; services are compared after building,
// where an unchanged one is the last build's pointer. Compared by
// pointer, an update that changes nothing a workload reads (a Gateway's
// status, a namespace's annotation) still has every pod's workload made
// again once; build then hands on the equal ones, so the stream server
// still encodes only what changed.
type buildContext struct {
	namespaces map[string]*corev1.Namespace
	gateways   map[string]*gatewayv1.Gateway // waypoints' Gateways, by "<namespace>/<name>"
	chosen     map[string]*corev1.Pod        // the pod serving each waypoint
	services   []*state.Service
}

func (c buildContext) same(o buildContext) bool {
	return maps.Equal(c.namespaces, o.namespaces) && maps.Equal(c.gateways, o.gateways) &&
		maps.Equal(c.chosen, o.chosen) && slices.Equal(c.services, o.services)
}

// buildSnapshot turns the cluster's objects into ztunnel's state. Problems
// (two pods claiming one address, say) are reported and the object left
// out; the error is set only when no snapshot could be built at all.
func buildSnapshot(objs objects, cfg Config) (*state.Snapshot, []error, error) {
	return newSnapshots(cfg).build(objs)
}

// snapshots builds one snapshot after another, each from the whole
// cluster, and hands on what did not change as the same pointers: a
// workload or service equal to the last build's is the last build's.
// The stream server encodes only pointers it has not seen (snapshots are
// never modified), so one pod's change is one encoding, not 5,000.
type snapshots struct {
	cfg Config
	// workloads and services are the last snapshot's, by UID and by
	// "<namespace>/<name>"; byPod and context are the last build's
	// model.made and model.context.
	workloads map[string]*state.Workload
	services  map[string]*state.Service
	byPod     map[*corev1.Pod]*state.Workload
	context   buildContext
}

func newSnapshots(cfg Config) *snapshots {
	return &snapshots{cfg: cfg}
}

// build is buildSnapshot, keeping the result for the next build. A
// snapshot that could not be built changes nothing kept.
func (s *snapshots) build(objs objects) (*state.Snapshot, []error, error) {
	m := &model{cfg: s.cfg, objs: objs, waypoints: map[string]*waypoint{}, known: s.byPod, context: s.context}
	m.findWaypoints()
	services := m.services()
	for i, svc := range services {
		if last := s.services[svc.Namespace+"/"+svc.Name]; last != nil && sameService(last, svc) {
			services[i] = last
		}
	}
	workloads := m.workloads(services)
	for i, w := range workloads {
		if last := s.workloads[w.UID]; last != nil && (last == w || sameWorkload(last, w)) {
			workloads[i] = last
		}
	}
	snap, err := state.NewSnapshot(workloads, services)
	if err != nil {
		return nil, m.problems, fmt.Errorf("controller: %w", err)
	}
	s.byPod, s.context = m.made, m.context
	s.workloads = make(map[string]*state.Workload, len(workloads))
	for _, w := range workloads {
		s.workloads[w.UID] = w
	}
	s.services = make(map[string]*state.Service, len(services))
	for _, svc := range services {
		s.services[svc.Namespace+"/"+svc.Name] = svc
	}
	return snap, m.problems, nil
}

func sameWorkload(a, b *state.Workload) bool {
	return a.UID == b.UID && a.Name == b.Name && a.Namespace == b.Namespace &&
		a.ServiceAccount == b.ServiceAccount && slices.Equal(a.IPs, b.IPs) && a.Node == b.Node &&
		maps.Equal(a.Labels, b.Labels) && a.Protocol == b.Protocol && a.Waypoint == b.Waypoint &&
		a.TrustDomain == b.TrustDomain
}

func sameService(a, b *state.Service) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.Hostname == b.Hostname &&
		slices.Equal(a.VIPs, b.VIPs) && slices.Equal(a.Ports, b.Ports) &&
		maps.Equal(a.Selector, b.Selector) && a.Waypoint == b.Waypoint
}

func (m *model) problem(format string, args ...any) {
	m.problems = append(m.problems, fmt.Errorf("controller: "+format, args...))
}

func (m *model) findWaypoints() {
	for _, gw := range m.objs.gateways {
		if gw.Spec.GatewayClassName != waypointClass {
			continue
		}
		wp := &waypoint{ref: gw.Namespace + "/" + gw.Name, gw: gw}
		switch gw.Labels[labelWaypointFor] {
		case "", "service":
			wp.forServices = true
		case "workload":
			wp.forWorkloads = true
		case "all":
			wp.forServices, wp.forWorkloads = true, true
		}
		m.waypoints[wp.ref] = wp
	}
}

// useWaypoint reads Istio's binding: the object's own label, else its
// namespace's; "none" on the object opts out. The waypoint must exist
// and serve that kind of traffic (allow says which), as Istio requires;
// otherwise there is none.
func (m *model) useWaypoint(namespace string, labels map[string]string, allow func(*waypoint) bool) string {
	name, wpNamespace := labels[labelUseWaypoint], labels[labelUseWaypointNamespace]
	if name == "" {
		if ns := m.objs.namespaces[namespace]; ns != nil {
			name, wpNamespace = ns.Labels[labelUseWaypoint], ns.Labels[labelUseWaypointNamespace]
		}
	}
	if name == "" || name == modeNone {
		return ""
	}
	if wpNamespace == "" {
		wpNamespace = namespace
	}
	wp, ok := m.waypoints[wpNamespace+"/"+name]
	if !ok || !allow(wp) {
		return ""
	}
	return wp.ref
}

// enrolled says whether pod is in the ambient mesh: its own label says
// ambient, or its namespace's does and its own does not say none.
func (m *model) enrolled(pod *corev1.Pod) bool {
	switch pod.Labels[labelDataplaneMode] {
	case modeAmbient:
		return true
	case modeNone:
		return false
	}
	ns := m.objs.namespaces[pod.Namespace]
	return ns != nil && ns.Labels[labelDataplaneMode] == modeAmbient
}

func (m *model) services() []*state.Service {
	var out []*state.Service
	for _, svc := range m.objs.services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		out = append(out, m.service(svc))
	}
	slices.SortFunc(out, func(a, b *state.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

func (m *model) service(svc *corev1.Service) *state.Service {
	out := &state.Service{
		Name: svc.Name, Namespace: svc.Namespace,
		Hostname: fmt.Sprintf("%s.%s.svc.%s", svc.Name, svc.Namespace, m.cfg.ClusterDomain),
		Selector: maps.Clone(svc.Spec.Selector),
		Waypoint: m.useWaypoint(svc.Namespace, svc.Labels, func(wp *waypoint) bool { return wp.forServices }),
	}
	for _, ip := range svc.Spec.ClusterIPs {
		if addr, err := netip.ParseAddr(ip); err == nil { // "None": headless
			out.VIPs = append(out.VIPs, addr)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // the mesh carries TCP only
		}
		out.Ports = append(out.Ports, state.ServicePort{
			Port: int(p.Port), TargetPort: m.targetPort(svc, p),
			Name: p.Name, AppProtocol: ptrValue(p.AppProtocol),
		})
	}
	return out
}

// targetPort is p's target as a number. A named target port is resolved
// on the first selected pod (by name) that declares it: the state holds
// one target per service port, not one per endpoint.
func (m *model) targetPort(svc *corev1.Service, p corev1.ServicePort) int {
	switch {
	case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
		return int(p.TargetPort.IntVal)
	case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
		for _, pod := range m.objs.pods {
			if pod.Namespace != svc.Namespace || !selects(svc.Spec.Selector, pod.Labels) {
				continue
			}
			if port, ok := namedPort(pod, p.TargetPort.StrVal); ok {
				return port
			}
		}
		m.problem("service %s/%s: port %d: no selected pod declares target port %q; using %d", svc.Namespace, svc.Name, p.Port, p.TargetPort.StrVal, p.Port)
	}
	return int(p.Port)
}

func namedPort(pod *corev1.Pod, name string) (int, bool) {
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return int(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

// workloads are the enrolled pods (HBONE), the pods outside the mesh that
// a service selects (None), and one workload per waypoint with a ready
// pod, named as its Gateway, since workloads and services name their
// waypoint "<namespace>/<gateway>". Waypoints first, then by namespace
// and name, the first claim to an address or a name wins: a later pod
// claiming one is left out and reported.
func (m *model) workloads(services []*state.Service) []*state.Workload {
	pods := slices.Clone(m.objs.pods)
	slices.SortFunc(pods, func(a, b *corev1.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	waypointPods := m.waypointPods(pods)
	m.takeContext(waypointPods, services)
	// Waypoints claim their names and addresses first: a pod named as a
	// waypoint's Gateway must not take the waypoint's place.
	slices.SortStableFunc(pods, func(a, b *corev1.Pod) int {
		_, wa := waypointPods[a]
		_, wb := waypointPods[b]
		return cmp.Compare(b2i(wb), b2i(wa))
	})
	var out []*state.Workload
	c := claims{addrs: map[netip.Addr]string{}, names: map[string]bool{}}
	m.made = make(map[*corev1.Pod]*state.Workload, len(pods))
	for _, pod := range pods {
		w, ok := m.known[pod]
		if !ok {
			w = m.workload(pod, waypointPods, services)
		}
		m.made[pod] = w
		if w == nil || !m.claim(c, w) {
			continue
		}
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *state.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// takeContext records what this build's workloads depend on besides
// their pods, and forgets the last build's workloads if it differs.
func (m *model) takeContext(waypointPods map[*corev1.Pod]*waypoint, services []*state.Service) {
	last := m.context
	m.context = buildContext{
		namespaces: m.objs.namespaces,
		gateways:   make(map[string]*gatewayv1.Gateway, len(m.waypoints)),
		chosen:     make(map[string]*corev1.Pod, len(waypointPods)),
		services:   services,
	}
	for ref, wp := range m.waypoints {
		m.context.gateways[ref] = wp.gw
	}
	for pod, wp := range waypointPods {
		m.context.chosen[wp.ref] = pod
	}
	if !m.context.same(last) {
		m.known = nil
	}
}

// claims are the addresses and names ("<namespace>/<name>") that
// workloads have taken; the state refuses two of either.
type claims struct {
	addrs map[netip.Addr]string // address -> UID
	names map[string]bool
}

func (m *model) claim(c claims, w *state.Workload) bool {
	name := w.Namespace + "/" + w.Name
	if c.names[name] {
		m.problem("pod %s: the name %s belongs to a waypoint; left out", w.UID, name)
		return false
	}
	for _, ip := range w.IPs {
		if kind := state.NotRoutable(ip); kind != "" {
			// Every proxy would refuse the whole update for it.
			m.problem("pod %s: address %s is %s, which no workload may have; left out", w.UID, ip, kind)
			return false
		}
	}
	for _, ip := range w.IPs {
		if other, dup := c.addrs[ip]; dup {
			m.problem("pod %s: address %s already belongs to %s; left out until one of them goes", w.UID, ip, other)
			return false
		}
	}
	for _, ip := range w.IPs {
		c.addrs[ip] = w.UID
	}
	c.names[name] = true
	return true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// waypointPods maps the chosen pod of each waypoint (its first ready pod
// by name: the state has one workload per waypoint) to the waypoint.
func (m *model) waypointPods(sorted []*corev1.Pod) map[*corev1.Pod]*waypoint {
	out := map[*corev1.Pod]*waypoint{}
	taken := map[string]bool{}
	for _, pod := range sorted {
		gateway := pod.Labels[labelGatewayName]
		if gateway == "" {
			continue
		}
		ref := pod.Namespace + "/" + gateway
		wp, ok := m.waypoints[ref]
		if !ok || taken[ref] || !ready(pod) {
			continue
		}
		out[pod], taken[ref] = wp, true
	}
	return out
}

func (m *model) workload(pod *corev1.Pod, waypointPods map[*corev1.Pod]*waypoint, services []*state.Service) *state.Workload {
	if pod.Status.Phase != corev1.PodRunning || pod.Spec.HostNetwork || pod.DeletionTimestamp != nil {
		return nil // host-network pods share the node's address: never workloads
	}
	w := &state.Workload{
		UID:  fmt.Sprintf("%s//Pod/%s/%s", clusterID, pod.Namespace, pod.Name),
		Name: pod.Name, Namespace: pod.Namespace,
		ServiceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default"),
		IPs:            podIPs(pod),
		Node:           pod.Spec.NodeName,
		Labels:         maps.Clone(pod.Labels),
		TrustDomain:    m.cfg.TrustDomain,
	}
	if len(w.IPs) == 0 {
		return nil
	}
	switch wp, isWaypoint := waypointPods[pod]; {
	case isWaypoint:
		w.Name, w.Protocol = wp.gw.Name, state.HBONE
	case pod.Labels[labelGatewayName] != "" && m.waypoints[pod.Namespace+"/"+pod.Labels[labelGatewayName]] != nil:
		return nil // another pod of a waypoint: not ready, or not the chosen one
	case m.enrolled(pod):
		w.Protocol = state.HBONE
		w.Waypoint = m.useWaypoint(pod.Namespace, pod.Labels, func(wp *waypoint) bool { return wp.forWorkloads })
	case selected(services, pod):
		w.Protocol = state.None
	default:
		return nil
	}
	return w
}

func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if addr, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, addr.Unmap())
		}
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		if addr, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, addr.Unmap())
		}
	}
	return out
}

func ready(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func selected(services []*state.Service, pod *corev1.Pod) bool {
	for _, svc := range services {
		if svc.Namespace == pod.Namespace && selects(svc.Selector, pod.Labels) {
			return true
		}
	}
	return false
}

// selects is a Service's selector test: an empty selector selects nothing
// (its endpoints are managed by hand, outside the state).
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
