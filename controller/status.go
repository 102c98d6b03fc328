package controller

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/policy/istio"
)

// The conditions istiod's ambient controller writes on an
// AuthorizationPolicy (pilot/pkg/model/service.go, WorkloadAuthorization
// and WaypointPolicyStatus.GetConditions): ZtunnelAccepted for a policy
// ztunnel enforces (no targetRefs), WaypointAccepted for one attached to
// waypoints by targetRefs.
const (
	condZtunnelAccepted  = "ZtunnelAccepted"
	condWaypointAccepted = "WaypointAccepted"

	reasonAccepted         = "Accepted"
	reasonUnsupportedValue = "UnsupportedValue"
	// reasonInvalid is istiod's WaypointPolicyReasonInvalid; istiod never
	// writes it for ztunnel, since its admission webhook refuses invalid
	// policies, but without that webhook this is where they are told.
	reasonInvalid          = "Invalid"
	reasonPartiallyInvalid = "PartiallyInvalid"
	reasonTargetNotFound   = "TargetNotFound"
	reasonAncestorNotBound = "AncestorNotBound"
)

// condition is one status condition as the controller decides it.
type condition struct {
	Type, Reason, Message string
	Status                bool
	ObservedGeneration    int64
}

// statusInput is what one AuthorizationPolicy's condition depends on.
type statusInput struct {
	obj      *clientv1.AuthorizationPolicy
	policy   *istio.Policy // as converted; nil when it did not convert
	problem  *Problem      // nil when valid
	warnings []istio.Warning
}

// policyCondition is the condition istiod would write on in.obj.
func (m *model) policyCondition(in statusInput, rootNamespace string) condition {
	spec := &in.obj.Spec
	c := condition{Type: condZtunnelAccepted, ObservedGeneration: in.obj.Generation}
	if len(spec.GetTargetRefs()) > 0 || spec.GetTargetRef() != nil {
		c.Type = condWaypointAccepted
	}
	switch {
	case in.problem != nil:
		c.Reason, c.Message = reasonInvalid, in.problem.Err.Error()
		if in.problem.Kept != 0 {
			c.Message += fmt.Sprintf(" (generation %d stays in force)", in.problem.Kept)
		}
	case c.Type == condWaypointAccepted:
		c.Status, c.Reason, c.Message = m.waypointBinding(in.policy, rootNamespace)
	case in.policy.Action == istio.Audit || in.policy.Action == istio.Custom:
		c.Reason, c.Message = reasonUnsupportedValue, fmt.Sprintf("ztunnel does not support the %s action", in.policy.Action)
	case len(in.warnings) > 0:
		msgs := make([]string, len(in.warnings))
		for i, w := range in.warnings {
			msgs[i] = strings.TrimPrefix(w.String(), w.Policy+": ")
		}
		c.Status, c.Reason, c.Message = true, reasonUnsupportedValue, strings.Join(msgs, "; ")
	default:
		c.Status, c.Reason, c.Message = true, reasonAccepted, "attached to ztunnel"
	}
	return c
}

// waypointBinding is istiod's WaypointAccepted for a valid policy with
// targetRefs (a ServiceEntry is not valid here): one binding per target,
// flattened as flattenConditions does (pilot/pkg/model/service.go).
func (m *model) waypointBinding(p *istio.Policy, rootNamespace string) (bool, string, string) {
	type binding struct {
		bound           bool
		reason, message string
		ancestor        string
	}
	var bs []binding
	for _, ref := range p.TargetRefs {
		ns := p.Namespace
		if ref.Namespace != "" {
			ns = ref.Namespace
		}
		key := ns + "/" + ref.Name
		b := binding{reason: "unknown", message: "not bound", ancestor: ref.Kind + "." + cmp.Or(ref.Group, "core") + ":" + key}
		switch ref.Kind {
		case "GatewayClass":
			switch {
			case ns != rootNamespace:
				b.reason, b.message = reasonInvalid, fmt.Sprintf("AuthorizationPolicy must be in the root namespace `%s` when referencing a GatewayClass", rootNamespace)
			case ref.Name == waypointClass:
				b.bound, b.reason, b.message = true, reasonAccepted, "bound to "+ref.Name
			default:
				b.reason = reasonTargetNotFound
			}
		case "Gateway":
			if _, ok := m.waypoints[key]; ok {
				b.bound, b.reason, b.message = true, reasonAccepted, "bound to "+key
			} else {
				b.reason = reasonTargetNotFound
			}
		case "Service":
			svc := m.findService(ns, ref.Name)
			wp := ""
			if svc != nil {
				wp = m.useWaypoint(ns, svc.Labels, func(wp *waypoint) bool { return wp.forServices })
			}
			switch {
			case svc == nil:
				b.reason, b.message = reasonTargetNotFound, fmt.Sprintf("Service %s was not found", key)
			case wp == "":
				b.reason, b.message = reasonAncestorNotBound, fmt.Sprintf("Service %s is not bound to a waypoint", key)
			default:
				b.bound, b.reason, b.message = true, reasonAccepted, "bound to "+wp
			}
		}
		bs = append(bs, b)
	}
	if len(bs) == 1 {
		return bs[0].bound, bs[0].reason, bs[0].message
	}
	var bound bool
	var unbound []string
	for _, b := range bs {
		if b.bound {
			bound = true
		} else {
			unbound = append(unbound, b.ancestor)
		}
	}
	reason, message := reasonInvalid, ""
	if bound {
		reason = reasonAccepted
		if len(unbound) > 0 {
			reason = reasonPartiallyInvalid
		}
	}
	if len(unbound) > 0 {
		message = "Invalid targetRefs: " + strings.Join(unbound, ", ")
	}
	return bound, reason, message
}

func (m *model) findService(namespace, name string) *corev1.Service {
	for _, svc := range m.objs.services {
		if svc.Namespace == namespace && svc.Name == name {
			return svc
		}
	}
	return nil
}

// withCondition is status with c in place of the condition of its type,
// and without the other condition type this controller owns (a policy
// that gains or loses targetRefs changes type); nil when status already
// says c. The transition time moves only when the status does.
func withCondition(status *metav1alpha1.IstioStatus, c condition, now *timestamppb.Timestamp) *metav1alpha1.IstioStatus {
	want := metav1.ConditionFalse
	if c.Status {
		want = metav1.ConditionTrue
	}
	out := status.DeepCopy()
	if out == nil {
		out = &metav1alpha1.IstioStatus{}
	}
	changed := false
	next := &metav1alpha1.IstioCondition{
		Type: c.Type, Status: string(want), Reason: c.Reason, Message: c.Message,
		ObservedGeneration: c.ObservedGeneration, LastTransitionTime: now,
	}
	i := slices.IndexFunc(out.Conditions, func(x *metav1alpha1.IstioCondition) bool { return x.GetType() == c.Type })
	switch {
	case i < 0:
		out.Conditions, changed = append(out.Conditions, next), true
	default:
		cur := out.Conditions[i]
		if cur.GetStatus() == next.Status {
			next.LastTransitionTime = cur.GetLastTransitionTime()
		}
		if cur.GetStatus() != next.Status || cur.GetReason() != next.Reason || cur.GetMessage() != next.Message ||
			cur.GetObservedGeneration() != next.ObservedGeneration {
			out.Conditions[i], changed = next, true
		}
	}
	other := condWaypointAccepted
	if c.Type == condWaypointAccepted {
		other = condZtunnelAccepted
	}
	if j := slices.IndexFunc(out.Conditions, func(x *metav1alpha1.IstioCondition) bool { return x.GetType() == other }); j >= 0 {
		out.Conditions, changed = slices.Delete(out.Conditions, j, j+1), true
	}
	if !changed {
		return nil
	}
	return out
}

// writeStatus brings each AuthorizationPolicy's condition up to date,
// writing only those that change. It returns whether a write met a
// conflict, so that the caller tries again.
func (c *Controller) writeStatus(ctx context.Context, m *model, inputs []statusInput) (retry bool) {
	if !c.Leading() {
		return false // the leader writes; this replica writes once it leads (LeaderElection)
	}
	now := timestamppb.Now()
	for _, in := range inputs {
		status := withCondition(&in.obj.Status, m.policyCondition(in, c.cfg.RootNamespace), now)
		if status == nil {
			continue
		}
		obj := in.obj.DeepCopy()
		status.DeepCopyInto(&obj.Status)
		_, err := c.istio.SecurityV1().AuthorizationPolicies(obj.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err != nil && ctx.Err() == nil {
			// A conflict is another writer's change, maybe to status only,
			// which the informer's handler ignores: try again. Any other
			// failure is tried again on the next change.
			c.log.Warn("AuthorizationPolicy status not written", "policy", obj.Namespace+"/"+obj.Name, "err", err)
			retry = retry || apierrors.IsConflict(err)
		}
	}
	return retry
}
