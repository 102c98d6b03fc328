package controller

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	istiolisters "istio.io/client-go/pkg/listers/security/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// Update is what the controller publishes after each rebuild. It is never
// modified once published; parts that did not change are shared with the
// previous update.
type Update struct {
	// Version counts the updates this controller published, from 1.
	Version uint64
	// Snapshot is the state every ztunnel and waypoint needs: the last one
	// that could be built (a cluster that makes NewSnapshot fail keeps the
	// previous one, and says so in Problems).
	Snapshot *state.Snapshot
	// Policies are the Istio security resources in force: every valid one
	// and, in place of an invalid one, the last valid version of that same
	// object, if it had one.
	Policies *istio.Resources
	// Bundle is the mesh-wide bundle translated from Policies (ztunnel's,
	// and every waypoint's for policies without targetRefs): the last one
	// that built.
	Bundle *Bundle
	// WaypointBundles are, per waypoint ("<namespace>/<gateway>"), the
	// bundle translated for it: Bundle's policies and those whose
	// targetRefs name its Gateway.
	WaypointBundles map[string]*Bundle
	// Problems are what this update leaves out or could not build.
	Problems []Problem
}

// dirty says what changed since the last rebuild.
type dirty uint8

const (
	// dirtyState: the snapshot reads namespaces, pods, services and
	// gateways.
	dirtyState dirty = 1 << iota
	// dirtyPolicies: bundles and status read the security resources,
	// and namespaces, services and gateways (for waypoints and
	// targetRefs); not pods.
	dirtyPolicies
	// dirtyWaypoints: with Config.Waypoints, the waypoints deployed read
	// gateways, and their status services; what did not change since its
	// last apply is not applied again.
	dirtyWaypoints
	// resyncWaypoints: apply every waypoint again, changed or not (every
	// WaypointDeployment.Resync, and when this replica starts leading).
	resyncWaypoints
)

// Controller watches the cluster and publishes an Update after every
// batch of relevant changes. Invariant: rebuilds, publishing and status
// writes all happen on Run's one goroutine, so the last-good values below
// need no lock; only pending is shared with the informers' handlers.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	kube     kubernetes.Interface
	istio    istioclient.Interface
	gateways gatewayclient.Interface
	deploy   *deployer // nil without Config.Waypoints

	mu      sync.Mutex
	pending dirty
	kick    chan struct{} // capacity 1: "something is pending"

	listers listers
	store   *policyStore
	rego    *regoStore
	builds  *bundleBuilds
	// snapshots builds the state, keeping its last build's workloads
	// and services for the next.
	snapshots *snapshots
	last      Update
	// regoReported are the ConfigMap refusals an Event was written for
	// ("<uid>/<resourceVersion>/<error>"), among those still refused.
	regoReported map[string]bool
	// stateProblems and policyProblems are those of the last rebuild of
	// each, kept for the updates that rebuild only the other.
	stateProblems, policyProblems []Problem

	leading atomic.Bool // with LeaderElection: holding the Lease
}

type listers struct {
	namespaces corelisters.NamespaceLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	gateways   gatewaylisters.GatewayLister
	aps        istiolisters.AuthorizationPolicyLister
	pas        istiolisters.PeerAuthenticationLister
	ras        istiolisters.RequestAuthenticationLister
	configMaps corelisters.ConfigMapLister // those Config.RegoSelector selects
}

// New returns a controller for the cluster that cfg reaches.
func New(rc *rest.Config, cfg Config) (*Controller, error) {
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	gc, err := gatewayclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	cfg = cfg.withDefaults()
	if _, err := labels.Parse(cfg.RegoSelector); err != nil {
		return nil, fmt.Errorf("controller: the selector of ConfigMaps of user Rego: %w (docs/user-rego.md)", err)
	}
	c := &Controller{
		cfg: cfg, log: cfg.Logger, kube: kube, istio: ic, gateways: gc,
		kick:   make(chan struct{}, 1),
		store:  newPolicyStore(cfg.istioOptions("")),
		rego:   newRegoStore(cfg.RegoNamespaces),
		builds: newBundleBuilds(cfg),

		snapshots: newSnapshots(cfg),
	}
	if w := cfg.Waypoints; w != nil {
		if w.Template == nil {
			return nil, fmt.Errorf("controller: Waypoints without a Template")
		}
		dyn, err := dynamic.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
		c.deploy = &deployer{cfg: *w, dyn: dyn, applied: map[string]*deployed{}}
	}
	return c, nil
}

// Run watches until ctx ends: it starts the informers, waits for their
// first lists, publishes the first update, then one per batch of changes
// (gathered for Config.Debounce after the first). Every goroutine it
// starts has ended when it returns.
func (c *Controller) Run(ctx context.Context) error {
	var elector *leaderelection.LeaderElector
	if le := c.cfg.LeaderElection; le != nil {
		var err error
		if elector, err = c.elector(*le); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	kubeInf := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithTransform(stripManagedFields))
	istioInf := istioinformers.NewSharedInformerFactoryWithOptions(c.istio, 0, istioinformers.WithTransform(stripManagedFields))
	gwInf := gatewayinformers.NewSharedInformerFactoryWithOptions(c.gateways, 0, gatewayinformers.WithTransform(stripManagedFields))
	// The ConfigMaps of user Rego only: a cluster's other ConfigMaps are
	// neither listed nor held.
	regoInf := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithTransform(stripManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = c.cfg.RegoSelector }))
	defer func() {
		cancel()
		kubeInf.Shutdown()
		istioInf.Shutdown()
		gwInf.Shutdown()
		regoInf.Shutdown()
	}()
	synced, err := c.watch(kubeInf, istioInf, gwInf, regoInf)
	if err != nil {
		return err
	}
	kubeInf.Start(ctx.Done())
	istioInf.Start(ctx.Done())
	gwInf.Start(ctx.Done())
	regoInf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // only ctx's end stops the wait: a stop before the first list
	}
	if elector != nil {
		var wg sync.WaitGroup
		defer func() {
			cancel()
			wg.Wait() // the Lease is given up before Run returns
		}()
		wg.Go(func() { campaign(ctx, elector) })
	}
	c.mark(dirtyState | dirtyPolicies | resyncWaypoints)
	var resync <-chan time.Time
	if c.deploy != nil {
		t := time.NewTicker(c.deploy.cfg.resync())
		defer t.Stop()
		resync = t.C
	}
	for {
		c.rebuild(ctx, c.take())
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-resync:
			c.add(resyncWaypoints)
		}
		if !c.wait(ctx, c.cfg.Debounce) {
			return nil
		}
	}
}

func (c *Controller) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watch registers the informers and their handlers.
func (c *Controller) watch(kubeInf informers.SharedInformerFactory, istioInf istioinformers.SharedInformerFactory, gwInf gatewayinformers.SharedInformerFactory, regoInf informers.SharedInformerFactory) ([]cache.InformerSynced, error) {
	core := kubeInf.Core().V1()
	cms := regoInf.Core().V1().ConfigMaps()
	sec := istioInf.Security().V1()
	gws := gwInf.Gateway().V1().Gateways()
	c.listers = listers{
		namespaces: core.Namespaces().Lister(), pods: core.Pods().Lister(), services: core.Services().Lister(),
		gateways: gws.Lister(),
		aps:      sec.AuthorizationPolicies().Lister(), pas: sec.PeerAuthentications().Lister(), ras: sec.RequestAuthentications().Lister(),
		configMaps: cms.Lister(),
	}
	all := handler{c: c, what: dirtyState | dirtyPolicies}
	informers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{core.Namespaces().Informer(), all},
		{core.Pods().Informer(), handler{c: c, what: dirtyState}},
		{core.Services().Informer(), handler{c: c, what: dirtyState | dirtyPolicies | dirtyWaypoints}},
		// The model reads a Gateway's spec, labels and annotations, not
		// its status, which this controller writes.
		{gws.Informer(), handler{c: c, what: dirtyState | dirtyPolicies | dirtyWaypoints, ignoreStatus: true}},
		{sec.AuthorizationPolicies().Informer(), handler{c: c, what: dirtyPolicies, ignoreStatus: true}},
		{sec.PeerAuthentications().Informer(), handler{c: c, what: dirtyPolicies, ignoreStatus: true}},
		{sec.RequestAuthentications().Informer(), handler{c: c, what: dirtyPolicies, ignoreStatus: true}},
		// A ConfigMap has no generation: every update may change its data.
		{cms.Informer(), handler{c: c, what: dirtyPolicies}},
	}
	var synced []cache.InformerSynced
	for _, i := range informers {
		reg, err := i.inf.AddEventHandler(i.h)
		if err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	return synced, nil
}

// handler marks what a change of one kind makes dirty.
type handler struct {
	c    *Controller
	what dirty
	// ignoreStatus skips updates that change neither the spec
	// (generation) nor labels or annotations: the controller's own status
	// writes, among others.
	ignoreStatus bool
}

func (h handler) OnAdd(any, bool) { h.c.mark(h.what) }
func (h handler) OnDelete(any)    { h.c.mark(h.what) }
func (h handler) OnUpdate(old, obj any) {
	if h.ignoreStatus && sameSpec(old, obj) {
		return
	}
	h.c.mark(h.what)
}

func sameSpec(old, obj any) bool {
	a, errA := meta.Accessor(old)
	b, errB := meta.Accessor(obj)
	return errA == nil && errB == nil && a.GetGeneration() == b.GetGeneration() &&
		labels.Equals(a.GetLabels(), b.GetLabels()) && labels.Equals(a.GetAnnotations(), b.GetAnnotations())
}

func (c *Controller) mark(d dirty) {
	c.add(d)
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// add marks d dirty without waking Run: for a caller that is Run.
func (c *Controller) add(d dirty) {
	c.mu.Lock()
	c.pending |= d
	c.mu.Unlock()
}

func (c *Controller) take() dirty {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.pending
	c.pending = 0
	return d
}

// stripManagedFields drops what the informers' caches need not hold.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
