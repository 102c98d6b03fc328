package localmesh

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// What a cluster holds for a waypoint, as istioctl waypoint apply makes
// it: a Gateway of class istio-waypoint whose pods carry its name, and
// the istio.io/use-waypoint label on what sends its traffic through it.
const (
	waypointClass             = "istio-waypoint"
	labelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	labelUseWaypoint          = "istio.io/use-waypoint"
	labelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
)

// createGateways makes the Gateway of every waypoint pod, named after
// the pod, in its namespace; it serves services (Istio's default), as
// Config.Services name waypoints.
func (m *Mesh) createGateways(ctx context.Context) error {
	gc, err := gatewayclient.NewForConfig(m.cfg.Kubernetes)
	if err != nil {
		return fmt.Errorf("localmesh: gateway client: %w", err)
	}
	for _, p := range m.cfg.Pods {
		if !p.Waypoint {
			continue
		}
		if err := m.createNamespace(ctx, p.Namespace, m.namespaceEnrolled(p)); err != nil {
			return err
		}
		_, err := gc.GatewayV1().Gateways(p.Namespace).Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name},
			Spec: gatewayv1.GatewaySpec{
				GatewayClassName: waypointClass,
				Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("localmesh: gateway %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// createServices makes a Service object of each of Config.Services: its
// first VIP the ClusterIP (it must be in the API server's service range),
// its waypoint ("<namespace>/<name>") the istio.io/use-waypoint labels.
func (m *Mesh) createServices(ctx context.Context) error {
	for _, s := range m.cfg.Services {
		svc, err := serviceObject(s)
		if err != nil {
			return err
		}
		if err := m.createNamespace(ctx, s.Namespace, false); err != nil {
			return err
		}
		if _, err := m.Kube.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("localmesh: service %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	return nil
}

// serviceObject is the Service object of s.
func serviceObject(s state.LocalService) (*corev1.Service, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Labels: map[string]string{}},
		Spec:       corev1.ServiceSpec{Selector: s.Selector},
	}
	if len(s.VIPs) > 0 {
		if _, err := netip.ParseAddr(s.VIPs[0]); err != nil {
			return nil, fmt.Errorf("localmesh: service %s/%s: VIP %q: %w", s.Namespace, s.Name, s.VIPs[0], err)
		}
		svc.Spec.ClusterIP = s.VIPs[0]
	}
	if s.Waypoint != "" {
		ns, name, ok := strings.Cut(s.Waypoint, "/")
		if !ok {
			ns, name = s.Namespace, s.Waypoint
		}
		svc.Labels[labelUseWaypoint] = name
		if ns != s.Namespace {
			svc.Labels[labelUseWaypointNamespace] = ns
		}
	}
	for _, p := range s.Ports {
		port := corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: intstr.FromInt32(int32(p.TargetPort))}
		if port.Name == "" {
			port.Name = fmt.Sprintf("port-%d", p.Port)
		}
		if p.AppProtocol != "" {
			port.AppProtocol = &p.AppProtocol
		}
		svc.Spec.Ports = append(svc.Spec.Ports, port)
	}
	return svc, nil
}

// waypointControllerFlags are a waypoint process's flags for the control
// plane: the stream, its Gateway (whose bundle it downloads) and the
// bundles' verification, as the ztunnels have them (controllerFlags).
func (m *Mesh) waypointControllerFlags(spec PodSpec) []string {
	cp := m.ControlPlane
	return []string{
		"--controller", cp.StreamAddr, "--gateway", spec.Namespace + "/" + spec.Name,
		"--controller-bundles", cp.BundleURL, "--verification-key", cp.VerificationKey, "--controller-timeout", "60s",
	}
}
