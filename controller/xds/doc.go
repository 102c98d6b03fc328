// Package xds is the controller's state stream: a delta xDS server (the
// Aggregated Discovery Service's DeltaAggregatedResources, over gRPC) that
// sends every ztunnel and waypoint the mesh state as Istio's workload
// resources (type.googleapis.com/istio.workload.Address), one resource
// per workload and per service.
//
// The controller hands the server the whole desired state with Update;
// the server works out, per subscriber, which resources were added,
// changed or removed since what that subscriber has acknowledged, and
// sends only those. A subscriber holds at most one unacknowledged
// response: its ACK moves what it has forward, its NACK (logged with its
// reason and recorded for status) leaves it where it was, and the server
// does not resend the refused state until the state changes again.
//
// Proxies authenticate with their SVIDs over mutual TLS. A ztunnel's SVID
// is per node, spiffe://<trust domain>/regomesh/ztunnel/<node>, so the
// node it subscribes for comes from its certificate, not from what it
// says: a request naming another node is refused. A waypoint is any
// workload that the current state names as a waypoint. Identify and
// Bundles expose that mapping, so the bundle server (controller/bundleserver)
// identifies its clients as the stream does.
//
// A second type on the same stream, bundle revisions
// (ztunnel/state/xds.BundleTypeURL), tells each proxy which revision of
// the bundles it reads is current (UpdateBundles); each type has its own
// ACK state per stream.
package xds
