package controller

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderElection picks, among the controller's replicas, the one that
// writes to the API server (AuthorizationPolicy and Gateway status, the
// waypoints it deploys), with a
// coordination.k8s.io Lease. Every replica watches the cluster, builds
// the state and bundles, and serves proxies: a proxy's stream does not
// depend on who leads.
type LeaderElection struct {
	// Namespace and Name of the Lease. Name defaults to
	// "regomesh-controller".
	Namespace, Name string
	// Identity is this replica's name in the Lease (its pod name).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// leaderelection settings; defaults 15s, 10s and 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// elector campaigns for the Lease (campaign), keeping c.leading up to
// date. On taking the lead it asks for a rebuild of the policies and
// every waypoint applied again, so that what the previous leader left
// unwritten is written. When its context
// ends it gives the Lease up at once, so that another replica need not
// wait for it to expire.
func (c *Controller) elector(le LeaderElection) (*leaderelection.LeaderElector, error) {
	if le.Namespace == "" || le.Identity == "" {
		return nil, fmt.Errorf("controller: leader election needs the Lease's namespace and this replica's identity (--leader-elect-namespace, --leader-elect-identity)")
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, le.Namespace, cmp.Or(le.Name, "regomesh-controller"),
		c.kube.CoreV1(), c.kube.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: le.Identity})
	if err != nil {
		return nil, fmt.Errorf("controller: leader election: %w", err)
	}
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cmp.Or(le.LeaseDuration, 15*time.Second),
		RenewDeadline:   cmp.Or(le.RenewDeadline, 10*time.Second),
		RetryPeriod:     cmp.Or(le.RetryPeriod, 2*time.Second),
		ReleaseOnCancel: true,
		Name:            "regomesh-controller",
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				c.log.Info("leading: this replica writes status", "lease", le.Namespace+"/"+lock.Describe(), "identity", le.Identity)
				c.leading.Store(true)
				c.mark(dirtyPolicies | resyncWaypoints)
			},
			OnStoppedLeading: func() {
				c.leading.Store(false)
				c.log.Info("not leading: status is left to the leader", "identity", le.Identity)
			},
			OnNewLeader: func(id string) {
				if id != le.Identity {
					c.log.Info("another replica leads", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("controller: leader election: %w", err)
	}
	return elector, nil
}

// campaign runs elector until ctx ends: its Run returns when the lead is
// lost, and the replica stands again.
func campaign(ctx context.Context, elector *leaderelection.LeaderElector) {
	for ctx.Err() == nil {
		elector.Run(ctx)
	}
}

// Leading reports whether this replica writes to the API server (status,
// waypoints): always without leader election, else while it holds the
// Lease.
func (c *Controller) Leading() bool {
	return c.cfg.LeaderElection == nil || c.leading.Load()
}
