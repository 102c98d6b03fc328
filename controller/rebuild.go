package controller

import (
	"context"
	"maps"
	"slices"

	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/regomesh/regomesh/policy/istio"
)

// rebuild reads the informers' caches, rebuilds what d says changed
// (what did not change is the previous update's, the same pointers),
// publishes, then writes the AuthorizationPolicies' status, reports
// refused user Rego on its ConfigMaps and, with
// Config.Waypoints, deploys the waypoints: proxies need not wait for the
// API server. Every rebuild reads the whole cache; the policies
// converted and translated are only those that changed (translations.go).
func (c *Controller) rebuild(ctx context.Context, d dirty) {
	objs := c.objects()
	m := &model{cfg: c.cfg, objs: objs, waypoints: map[string]*waypoint{}}
	m.findWaypoints()
	if d&(dirtyState|dirtyPolicies) != 0 {
		c.publish(ctx, d, m)
	}
	if c.deploy != nil && d&(dirtyWaypoints|resyncWaypoints) != 0 && c.Leading() {
		if c.deployWaypoints(ctx, m, d&resyncWaypoints != 0) {
			c.mark(dirtyWaypoints)
		}
	}
}

// publish rebuilds the state and policies d marks, publishes the update,
// and writes the AuthorizationPolicies' status.
func (c *Controller) publish(ctx context.Context, d dirty, m *model) {
	next := c.last
	next.Version++
	if d&dirtyState != 0 {
		c.stateProblems = c.rebuildState(&next, m.objs)
	}
	var status []statusInput
	var refused []regoRefusal
	if d&dirtyPolicies != 0 {
		c.policyProblems, status, refused = c.rebuildPolicies(ctx, &next, m)
	}
	next.Problems = slices.Concat(c.stateProblems, c.policyProblems)
	c.logNew(next.Problems)
	c.last = next
	published := next
	c.cfg.Publish(&published)
	if status != nil && c.writeStatus(ctx, m, status) {
		c.mark(dirtyPolicies)
	}
	c.reportRego(ctx, refused)
}

func (c *Controller) rebuildState(next *Update, objs objects) []Problem {
	snap, problems, err := c.snapshots.build(objs)
	var out []Problem
	for _, err := range problems {
		out = append(out, Problem{Kind: "State", Err: err})
	}
	if err != nil {
		out = append(out, Problem{Kind: "State", Err: err})
		return out // the last snapshot stays
	}
	next.Snapshot = snap
	return out
}

// rebuildPolicies converts and validates the security resources, checks
// the user Rego, and builds the bundles (keeping the last good one of
// each when a build fails), translating only the policies that changed
// since the last build. It returns the problems, what the
// AuthorizationPolicies' status is to say, and the ConfigMaps refused.
func (c *Controller) rebuildPolicies(ctx context.Context, next *Update, m *model) ([]Problem, []statusInput, []regoRefusal) {
	pobjs := c.policyObjects()
	res, problems := c.store.resources(pobjs)
	user, userProblems, refused := c.rego.modules(ctx, c.configMaps())
	problems = append(problems, userProblems...)
	next.Policies = res
	var warnings map[string][]istio.Warning
	if b, err := c.builds.mesh.build(res, user); err != nil {
		problems = append(problems, Problem{Kind: "Bundle", Err: err})
	} else {
		next.Bundle = b
		warnings = c.builds.mesh.warnings()
	}
	refs := slices.Sorted(maps.Keys(m.waypoints))
	c.builds.forget(refs)
	wbs := map[string]*Bundle{}
	for _, ref := range refs {
		b, err := c.builds.waypoint(ref).build(res, user)
		if err != nil {
			problems = append(problems, Problem{Kind: "Bundle", Name: ref, Err: err})
			b = c.last.WaypointBundles[ref]
		}
		if b != nil {
			wbs[ref] = b
		}
	}
	next.WaypointBundles = wbs
	return problems, statusInputs(pobjs.aps, res, problems, warnings), refused
}

// logNew logs the problems the last update did not have.
func (c *Controller) logNew(problems []Problem) {
	seen := map[string]bool{}
	for _, p := range c.last.Problems {
		seen[p.String()] = true
	}
	for _, p := range problems {
		if !seen[p.String()] {
			c.log.Warn("left out", "problem", p.String())
		}
	}
}

// statusInputs pairs each AuthorizationPolicy object with what decides
// its condition.
func statusInputs(objs []*clientv1.AuthorizationPolicy, res *istio.Resources, problems []Problem, warnings map[string][]istio.Warning) []statusInput {
	byID := map[string]*istio.Policy{}
	for _, p := range res.AuthorizationPolicies {
		byID[p.ID()] = p
	}
	bad := map[string]*Problem{}
	for i, p := range problems {
		if p.Kind == "AuthorizationPolicy" {
			bad[p.Namespace+"/"+p.Name] = &problems[i]
		}
	}
	out := make([]statusInput, 0, len(objs))
	for _, obj := range objs {
		id := obj.Namespace + "/" + obj.Name
		out = append(out, statusInput{obj: obj, policy: byID[id], problem: bad[id], warnings: warnings[id]})
	}
	return out
}

func (c *Controller) objects() objects {
	objs := objects{namespaces: map[string]*corev1.Namespace{}}
	nss, _ := c.listers.namespaces.List(labels.Everything()) // a cache read: no error
	for _, ns := range nss {
		objs.namespaces[ns.Name] = ns
	}
	objs.pods, _ = c.listers.pods.List(labels.Everything())
	objs.services, _ = c.listers.services.List(labels.Everything())
	objs.gateways, _ = c.listers.gateways.List(labels.Everything())
	return objs
}

func (c *Controller) policyObjects() policyObjects {
	var p policyObjects
	p.aps, _ = c.listers.aps.List(labels.Everything())
	p.pas, _ = c.listers.pas.List(labels.Everything())
	p.ras, _ = c.listers.ras.List(labels.Everything())
	return p
}

func (c *Controller) configMaps() []*corev1.ConfigMap {
	cms, _ := c.listers.configMaps.List(labels.Everything()) // the informer lists only the selected ones
	return cms
}
