package waypoint

import "errors"

var (
	// ErrNoState: no mesh state has been loaded yet, so no authority can be
	// resolved; tunnels are refused with 503.
	ErrNoState = errors.New("waypoint: no mesh state loaded")
	// ErrNoEndpoint: the target service selects no workload the waypoint
	// can tunnel to (503, response flag UH).
	ErrNoEndpoint = errors.New("waypoint: no endpoint for the target")
	// ErrLoop: the authority names the waypoint itself; serving it would
	// send the waypoint's traffic back to it.
	ErrLoop = errors.New("waypoint: the target is the waypoint itself")
)

// Response flags, as Envoy reports them in metrics and access logs.
const (
	FlagNone             = "-"
	FlagDenied           = "DENY" // policy refused the request or connection
	FlagNoRoute          = "NR"   // the authority names nothing in the state, or no HTTPRoute rule matches
	FlagNoHealthy        = "UH"   // the target has no endpoint
	FlagUpstream         = "UF"   // the upstream tunnel or request failed
	FlagTimeout          = "UT"   // no response within the rule's request timeout, or the retry policy's per-try timeout (504)
	FlagRetryLimit       = "URX"  // the last attempt failed as the retry policy retries, and no attempt was left
	FlagDelayInjected    = "DI"   // a rule's fault delayed the request
	FlagFaultInjected    = "FI"   // a rule's fault answered the request in its place
	FlagDownstreamClosed = "DC"   // the client left before an answer (during a fault\'s delay); response code 0
	FlagLoop             = "LOOP" // addressed to the waypoint itself
	FlagJWT              = "JWT"  // a RequestAuthentication refused the request's token (401); regomesh's own flag
)
