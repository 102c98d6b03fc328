package istio

import (
	"cmp"
	"slices"
)

// Options configure validation and translation. The zero value is Istio's
// defaults: root namespace istio-system, trust domain and cluster domain
// cluster.local, no aliases, no CUSTOM providers.
type Options struct {
	// RootNamespace is Istio's root namespace: a policy there without a
	// selector applies to the whole mesh, and its selector matches
	// workloads of every namespace. Default "istio-system".
	RootNamespace string
	// TrustDomain is the mesh's trust domain. In waypoints, a principal
	// naming it (or "cluster.local", which Istio reads as "the local trust
	// domain") also matches the same identity in each of
	// TrustDomainAliases, as Istio's trustDomainAliases do; ztunnel (L4)
	// compares principals as written, as Istio's does. Default
	// "cluster.local".
	TrustDomain string
	// TrustDomainAliases are other trust domains treated as the mesh's own
	// (during a trust domain migration, for example).
	TrustDomainAliases []string
	// ClusterDomain is the DNS suffix of Service names: a targetRef to
	// Service "web" in namespace "shop" applies to destinations whose
	// input.destination.service is "web.shop.svc.<ClusterDomain>".
	// Default "cluster.local".
	ClusterDomain string
	// Providers are the CUSTOM providers the bundle set supplies, each as a
	// Rego package data.mesh.providers["<name>"] with a boolean `allow`. A
	// CUSTOM policy naming any other provider denies, in waypoints, every
	// request its rules match, as Istio does; the translation warns.
	Providers []string
	// Waypoint is the waypoint ("<namespace>/<name>" of its Gateway) the
	// bundle is translated for. Policies whose targetRefs name a Gateway
	// apply only in that waypoint's bundle: the input document does not
	// say which waypoint evaluates it, so the bundle does. Empty: no
	// Gateway-targeted policy applies (each is reported in a warning).
	Waypoint string
}

const (
	defaultRootNamespace = "istio-system"
	defaultTrustDomain   = "cluster.local"
	defaultClusterDomain = "cluster.local"
	// istioLocalTrustDomain is what Istio reads as "the local trust domain"
	// in a principal, whatever the mesh's trust domain is.
	istioLocalTrustDomain = "cluster.local"
	// waypointClass is the GatewayClass of Istio waypoints.
	waypointClass = "istio-waypoint"
)

// withDefaults returns o with every empty setting at its default.
func (o Options) withDefaults() Options {
	o.RootNamespace = cmp.Or(o.RootNamespace, defaultRootNamespace)
	o.TrustDomain = cmp.Or(o.TrustDomain, defaultTrustDomain)
	o.ClusterDomain = cmp.Or(o.ClusterDomain, defaultClusterDomain)
	return o
}

// trustDomains is the mesh's trust domain followed by its aliases.
func (o Options) trustDomains() []string {
	return dedupe(append([]string{o.TrustDomain}, o.TrustDomainAliases...))
}

func (o Options) knowsProvider(name string) bool { return slices.Contains(o.Providers, name) }
