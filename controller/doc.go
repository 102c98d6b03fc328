// Package controller is the watch half of regomesh's control plane: it
// turns a Kubernetes cluster into what the proxies need, and publishes it
// after every batch of changes as an Update: the state (a
// *state.Snapshot, as ztunnel's --local-config gives it), the Istio
// security resources in force, and the OPA bundles translated from them.
//
// Watch (controller.go): client-go shared informers for Namespaces, Pods,
// Services, Gateway API Gateways and security.istio.io/v1
// AuthorizationPolicies, PeerAuthentications and RequestAuthentications.
// A change marks what it affects (pods: the state; security resources:
// the policies; namespaces, services and gateways: both), and the
// controller rebuilds once the changes have been gathered for
// Config.Debounce.
//
// Model (model.go), as Istio's ambient mode reads the cluster:
//
//   - istio.io/dataplane-mode=ambient on a namespace or a pod enrols it;
//     =none on a pod opts it out. Enrolled pods that are Running with an
//     address are HBONE workloads; pods outside the mesh that a Service
//     selects are workloads with protocol None, so the service's
//     endpoints are complete; host-network pods never are workloads.
//   - Services are modelled by their selector, as the state models them
//     (Snapshot.Endpoints selects the workloads), not by EndpointSlices:
//     the slices of a selector service say what the selector and the pods
//     already say, and the state has no place for hand-made endpoints.
//   - istio.io/use-waypoint on the pod or service, else on its namespace
//     ("none" opts out; istio.io/use-waypoint-namespace names another
//     namespace) binds it to a Gateway of class istio-waypoint that
//     exists and serves that kind of traffic (istio.io/waypoint-for:
//     service by default, workload, all). The waypoint itself is a
//     workload named as its Gateway, from its first ready pod labelled
//     gateway.networking.k8s.io/gateway-name, since the state names
//     waypoints "<namespace>/<gateway>".
//
// Policies (policies.go): each security object is converted and
// validated on its own (istio.Convert, ConvertPeerAuthentication,
// ConvertRequestAuthentication and their Validate). An invalid one is
// reported and left out; if an earlier version of that same object (same
// UID) was valid, that version stays in force. Nothing else changes. The
// resources in force are translated (istio.TranslateAll) into the
// mesh-wide bundle and one bundle per waypoint; a bundle that fails to
// build is reported and the last good one stays.
//
// Status (status.go): each AuthorizationPolicy gets the condition
// istiod's ambient controller writes: ZtunnelAccepted for a policy
// without targetRefs (Accepted, "attached to ztunnel"; UnsupportedValue
// with the translation's warnings, still true; false for AUDIT and
// CUSTOM), WaypointAccepted for one with targetRefs (bound to the named
// Gateway, GatewayClass or Service's waypoint, else TargetNotFound,
// AncestorNotBound or Invalid). Validation errors, which istiod's
// admission webhook refuses before any status, are a false condition
// with reason Invalid. Status is written through UpdateStatus only when
// it changes.
//
// Waypoints (waypointtemplate.go, waypointdeploy.go, gatewaystatus.go),
// with Config.Waypoints: for every Gateway of class istio-waypoint the
// leader renders a WaypointTemplate (ServiceAccount, Deployment, Service,
// PodDisruptionBudget, HorizontalPodAutoscaler), makes the Gateway their
// owner, server-side applies them as "regomesh-controller", forcing, when
// they changed and every WaypointDeployment.Resync (which undoes hand
// edits), and writes the Gateway's Accepted and Programmed conditions and
// its Service's address, as istiod does for the waypoints it deploys.
package controller
