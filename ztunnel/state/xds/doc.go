// Package xds carries the mesh state of package state over delta xDS, the
// stream Istio's ztunnel consumes: resources of type
// type.googleapis.com/istio.workload.Address (Istio's workload API), one per
// workload (named by its UID) and one per service (named
// "<namespace>/<hostname>").
//
// The wire form is converted here, once, at the edge (Encode on the
// controller's side, Decode on the proxies'); everything else reads the
// plain types of package state. What Istio's types have no field for
// (a workload's labels, a service's selector) travels in Istio's
// extension field under the names in LabelsExtension and
// SelectorExtension.
//
// Client is the proxies' side of the stream: it applies each response's
// added, updated and removed resources to the state it holds, hands every
// good state to the same apply function the local-config watcher feeds,
// ACKs it, and NACKs (with the reason) a response it cannot apply, keeping
// the last good state. While the controller is away it keeps that state
// and reconnects with backoff; on reconnect it tells the controller the
// versions it holds, so the controller sends only what changed meanwhile,
// removals included.
//
// The stream also carries, as resources of BundleTypeURL, the revision of
// each policy bundle the proxy reads (MeshBundle, WaypointBundle); the
// client keeps them (Client.Bundles) and hands each change to
// ClientConfig.Bundles. The bundles themselves are fetched by the OPA
// bundle service protocol, not over the stream.
package xds
