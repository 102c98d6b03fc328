package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// FieldManager is the controller's name in the managedFields of what it
// applies.
const FieldManager = "regomesh-controller"

// WaypointDeployment makes the controller deploy a waypoint for every
// Gateway of class istio-waypoint, as istiod does: the leader applies the
// template's objects (server-side apply, forced, as FieldManager) when the
// Gateway or the template changes, and again every Resync, and writes the
// Gateway's status.
type WaypointDeployment struct {
	// Template of each waypoint's objects (ParseWaypointTemplate).
	Template *WaypointTemplate
	// Resync is how often every waypoint is applied again although nothing
	// the controller watches changed: what undoes a hand edit of a
	// waypoint's Deployment (the controller does not watch Deployments).
	// Default 5m.
	Resync time.Duration
}

func (w *WaypointDeployment) resync() time.Duration {
	return cmp.Or(w.Resync, 5*time.Minute)
}

// deployed is what the leader last applied for one Gateway.
type deployed struct {
	// hash of the objects last applied without error; zero after a
	// failure, so that the next rebuild applies again.
	hash [sha256.Size]byte
	// service is the waypoint's Service as the last apply answered, for
	// the Gateway's address until the informer's cache has it.
	service *unstructured.Unstructured
	// err is the last render's or apply's failure, told in the Gateway's
	// Programmed condition.
	err error
}

// deployer applies waypoints. Invariant: only Run's goroutine uses it.
type deployer struct {
	cfg     WaypointDeployment
	dyn     dynamic.Interface
	applied map[string]*deployed // by Gateway, "<namespace>/<name>"
}

// deployWaypoints applies each waypoint Gateway's objects when they
// changed since the last apply (all of them with resync), then brings the
// Gateways' status up to date. It returns whether a status write met a
// conflict, so that the caller tries again. The leader alone calls it.
func (c *Controller) deployWaypoints(ctx context.Context, m *model, resync bool) (retry bool) {
	d := c.deploy
	for _, ref := range slices.Sorted(maps.Keys(m.waypoints)) {
		gw := m.waypoints[ref].gw
		last := d.applied[ref]
		if last == nil {
			last = &deployed{}
			d.applied[ref] = last
		}
		objs, err := d.cfg.Template.Render(gw)
		if err == nil {
			h := hashObjects(objs)
			if resync || h != last.hash {
				last.hash = [sha256.Size]byte{}
				if last.service, err = d.apply(ctx, objs); err == nil {
					last.hash = h
				}
			}
		}
		if err != nil && ctx.Err() == nil && (last.err == nil || last.err.Error() != err.Error()) {
			c.log.Warn("waypoint not deployed", "gateway", ref, "err", err)
		}
		last.err = err
		if c.writeGatewayStatus(ctx, m, ref, last) {
			retry = true
		}
	}
	for ref := range d.applied {
		if m.waypoints[ref] == nil {
			delete(d.applied, ref) // gone: the garbage collector deletes what it owned
		}
	}
	return retry
}

// apply server-side applies objs in order, forcing: a field another
// manager (a hand edit) took is ours again. Strict field validation makes
// a misspelt field in the template an error, not a silent default. It
// returns the Service as the API server answered.
func (d *deployer) apply(ctx context.Context, objs []*unstructured.Unstructured) (*unstructured.Unstructured, error) {
	force := true
	var svc *unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		body, err := o.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("controller: %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		got, err := d.dyn.Resource(gvk.GroupVersion().WithResource(waypointKinds[gvk])).Namespace(o.GetNamespace()).
			Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: &force, FieldValidation: "Strict"})
		if err != nil {
			return nil, fmt.Errorf("controller: apply %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		if gvk.Kind == "Service" && svc == nil {
			svc = got
		}
	}
	return svc, nil
}

// hashObjects hashes what would be applied: JSON of maps is in key
// order, so the same objects hash the same.
func hashObjects(objs []*unstructured.Unstructured) [sha256.Size]byte {
	h := sha256.New()
	for _, o := range objs {
		b, _ := json.Marshal(o.Object) // rendered from YAML: always marshals
		h.Write(b)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
