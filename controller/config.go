package controller

import (
	"cmp"
	"log/slog"
	"time"

	"github.com/regomesh/regomesh/policy/istio"
)

// Config is how the controller reads the cluster. The zero value is
// Istio's defaults.
type Config struct {
	// TrustDomain of workload identities (spiffe://<trust domain>/ns/...).
	// Default "cluster.local".
	TrustDomain string
	// RootNamespace is Istio's root namespace: policies there without a
	// selector apply to the whole mesh. Default "istio-system".
	RootNamespace string
	// ClusterDomain is the DNS suffix of service hostnames
	// (<name>.<namespace>.svc.<cluster domain>). Default "cluster.local".
	ClusterDomain string
	// Debounce is how long the controller gathers changes after the first
	// one before it rebuilds and publishes: a rollout of many pods costs
	// one update, not one per pod. Default 100ms.
	Debounce time.Duration
	// Publish receives every update, one at a time, from the controller's
	// goroutine; it must not keep the controller waiting long, nor modify
	// the update, which other readers may share.
	Publish func(*Update)
	// Logger for problems found in the cluster (invalid policies, address
	// conflicts) and status writes that fail. Default slog.Default().
	Logger *slog.Logger
	// LeaderElection, when set, makes this replica write status only while
	// it leads; nil means it always writes (one replica).
	LeaderElection *LeaderElection
	// RegoSelector is the label selector of the ConfigMaps whose Rego
	// modules the controller adds to every bundle, in any namespace
	// (docs/user-rego.md). Default DefaultRegoSelector,
	// "regomesh.io/rego=true".
	RegoSelector string
	// RegoNamespaces are the namespaces whose selected ConfigMaps may add
	// Rego: it decides for the whole mesh, as an AuthorizationPolicy in
	// the root namespace does. Default: the root namespace alone.
	RegoNamespaces []string
	// Waypoints, when set, makes the controller (its leader) deploy a
	// waypoint for every Gateway of class istio-waypoint and write the
	// Gateway's status; nil leaves waypoints to whoever deploys them.
	Waypoints *WaypointDeployment
}

func (c Config) withDefaults() Config {
	c.TrustDomain = cmp.Or(c.TrustDomain, "cluster.local")
	c.RootNamespace = cmp.Or(c.RootNamespace, "istio-system")
	c.ClusterDomain = cmp.Or(c.ClusterDomain, "cluster.local")
	c.RegoSelector = cmp.Or(c.RegoSelector, DefaultRegoSelector)
	if len(c.RegoNamespaces) == 0 {
		c.RegoNamespaces = []string{c.RootNamespace}
	}
	if c.Debounce <= 0 {
		c.Debounce = 100 * time.Millisecond
	}
	if c.Publish == nil {
		c.Publish = func(*Update) {}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// istioOptions are the translator's options for this mesh; waypoint is
// the Gateway ("<namespace>/<name>") a bundle is for, or "".
func (c Config) istioOptions(waypoint string) istio.Options {
	return istio.Options{
		RootNamespace: c.RootNamespace,
		TrustDomain:   c.TrustDomain,
		ClusterDomain: c.ClusterDomain,
		Waypoint:      waypoint,
	}
}
