package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// gatewayStatus is what a waypoint Gateway's status says, as istiod
// writes it for the waypoints it deploys: Accepted, and Programmed once
// the waypoint's Service has an address, which status.addresses gives.
func (c *Controller) gatewayStatus(gw *gatewayv1.Gateway, svc *corev1.Service, d *deployed) ([]metav1.Condition, []gatewayv1.GatewayStatusAddress) {
	accepted := metav1.Condition{
		Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "Resource accepted",
		ObservedGeneration: gw.Generation,
	}
	programmed := metav1.Condition{
		Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
		ObservedGeneration: gw.Generation,
	}
	var addrs []gatewayv1.GatewayStatusAddress
	switch {
	case d.err != nil:
		programmed.Reason, programmed.Message = string(gatewayv1.GatewayReasonInvalid), "waypoint not deployed: "+d.err.Error()
	case svc == nil:
		programmed.Reason, programmed.Message = string(gatewayv1.GatewayReasonAddressNotAssigned), "Failed to assign to any requested addresses: the waypoint's Service does not exist yet"
	default:
		host := svc.Name + "." + svc.Namespace + ".svc." + c.cfg.ClusterDomain
		addrs = serviceAddresses(svc, host)
		var at []string
		for _, l := range gw.Spec.Listeners {
			if a := fmt.Sprintf("%s:%d", host, l.Port); !slices.Contains(at, a) {
				at = append(at, a)
			}
		}
		if len(at) == 0 {
			at = []string{host}
		}
		programmed.Status, programmed.Reason = metav1.ConditionTrue, string(gatewayv1.GatewayReasonProgrammed)
		programmed.Message = "Resource programmed, assigned to service(s) " + strings.Join(at, ", ")
	}
	return []metav1.Condition{accepted, programmed}, addrs
}

// serviceAddresses are a Service's cluster IPs, as istiod reports a
// waypoint's; a headless Service's hostname.
func serviceAddresses(svc *corev1.Service, host string) []gatewayv1.GatewayStatusAddress {
	ipType, hostType := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	var out []gatewayv1.GatewayStatusAddress
	for _, ip := range clusterIPs(svc) {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, gatewayv1.GatewayStatusAddress{Type: &ipType, Value: ip})
		}
	}
	if len(out) == 0 {
		out = []gatewayv1.GatewayStatusAddress{{Type: &hostType, Value: host}}
	}
	return out
}

func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

// waypointService is the waypoint's Service: from the informer's cache,
// else as the last apply answered (the cache has not seen it yet).
func (m *model) waypointService(namespace string, d *deployed) *corev1.Service {
	if d.service == nil {
		return nil
	}
	if svc := m.findService(namespace, d.service.GetName()); svc != nil {
		return svc
	}
	var svc corev1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(d.service.Object, &svc); err != nil {
		return nil
	}
	return &svc
}

// writeGatewayStatus writes ref's status when it changes. It returns
// whether the write met a conflict, so that the caller tries again.
func (c *Controller) writeGatewayStatus(ctx context.Context, m *model, ref string, d *deployed) (retry bool) {
	gw := m.waypoints[ref].gw
	conds, addrs := c.gatewayStatus(gw, m.waypointService(gw.Namespace, d), d)
	next := gw.DeepCopy()
	changed := false
	for _, cond := range conds {
		if meta.SetStatusCondition(&next.Status.Conditions, cond) {
			changed = true
		}
	}
	if !slices.EqualFunc(next.Status.Addresses, addrs, sameAddress) {
		next.Status.Addresses, changed = addrs, true
	}
	if !changed {
		return false
	}
	_, err := c.gateways.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil && ctx.Err() == nil {
		c.log.Warn("Gateway status not written", "gateway", ref, "err", err)
		return apierrors.IsConflict(err)
	}
	return false
}

func sameAddress(a, b gatewayv1.GatewayStatusAddress) bool {
	return a.Value == b.Value && ((a.Type == nil) == (b.Type == nil)) && (a.Type == nil || *a.Type == *b.Type)
}
