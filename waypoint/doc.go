// Package waypoint is regomesh's L7 proxy: it terminates HBONE tunnels
// that ztunnels send to it for the services and workloads it serves,
// decides every HTTP request in Rego with the same engine and bundles as
// ztunnel, and tunnels allowed requests onward to the chosen endpoint's
// ztunnel, presenting its own SVID.
//
// Per tunnel (ServeTunnel), in phases:
//
//  1. resolve the CONNECT authority in the state: a service VIP:port or
//     a workload IP:port (state.Snapshot.ResolveTarget);
//  2. pick the protocol: the service port's declared protocol (appProtocol
//     or port name, as Istio reads them), else sniff the first bytes
//     (sniff.go): an HTTP/1.1 request line, or the HTTP/2 prior-knowledge
//     preface that gRPC clients send;
//  3. serve HTTP/1.1 with net/http and h2c with golang.org/x/net/http2, or
//     relay other TCP after an L4 decision (tcp.go).
//
// Per request (request.go): build the l7 input with the state's one input
// builder (state.Snapshot.WaypointInput), authorize (a deny is 403 "RBAC:
// access denied", or gRPC PERMISSION_DENIED; an engine error denies),
// choose an endpoint, proxy over HBONE (upstream.go), and report one
// result to both the metrics (Istio's request metrics, reporter
// "waypoint") and the JSON access log.
//
// The source of every decision is the tunnel's peer: ztunnels tunnel to a
// waypoint with the client workload's own SVID, so the verified peer ID is
// the client's principal and the socket's peer its address. A Forwarded
// header is believed only from a waypoint in the state (another waypoint
// chaining to this one), and only as source.remote_ip.
package waypoint
