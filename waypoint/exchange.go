package waypoint

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// exchange is the one result of a request (or a relayed connection): the
// metrics and the access log both read it, so they never disagree.
type exchange struct {
	kind     string // "http" or "tcp"
	start    time.Time
	end      time.Time
	peer     state.Peer
	source   *state.Workload // the client workload, when the state knows its address
	target   state.Target
	endpoint *state.Workload
	upstream netip.AddrPort
	rule     *routeRule        // the HTTPRoute or VirtualService rule that routed the request, if any
	dest     state.Target      // where the request goes after routing: the endpoint's service or workload
	balanced []*state.Workload // the endpoints the balancer chose among, until finishEndpoint

	attempts  int  // upstream attempts made
	exhausted bool // the last attempt failed as the retry policy retries, with no attempt left (URX)
	retryHeld bool // the attempt in flight holds a retry of the budget

	method, path, host, proto, traceparent string
	grpc                                   bool

	decision    policy.Decision // valid when hasDecision
	hasDecision bool            // the policy answered (held by value: no allocation per request)
	status      int
	grpcStatus  string
	flags       string
	reqBytes    int64
	respBytes   int64
	reqCount    atomic.Int64 // request body bytes, counted as the proxy reads them
	err         error

	series *atomic.Pointer[requestSeries] // the tunnel's last metric children (Metrics.seriesOf); nil: none kept
}

func (x *exchange) duration() time.Duration { return x.end.Sub(x.start) }

// decided records the policy's answer.
func (x *exchange) decided(d policy.Decision) { x.decision, x.hasDecision = d, true }

// fail records a failure with its response flag.
func (x *exchange) fail(flag string, err error) {
	x.addFlag(flag)
	x.err = err
}

// addFlag adds a response flag; several are joined with ",", as Envoy
// writes them ("UF,URX").
func (x *exchange) addFlag(flag string) {
	if x.flags == "" {
		x.flags = flag
	} else if !x.hasFlag(flag) {
		x.flags += "," + flag
	}
}

func (x *exchange) hasFlag(flag string) bool {
	for f := range strings.SplitSeq(x.flags, ",") {
		if f == flag {
			return true
		}
	}
	return false
}

// budgetKey names the destination whose retry budget the request's
// retries draw on: the service routed to, or the workload addressed.
func (x *exchange) budgetKey() string {
	if x.dest.Service != nil {
		return x.dest.Service.Hostname
	}
	return x.upstream.String()
}

func (x *exchange) entry() AccessEntry {
	e := AccessEntry{
		Time: x.start, Kind: x.kind, Source: x.peer.Addr.String(), SourceID: x.peer.Principal,
		Destination: x.target.Addr.String(), Method: x.method, Path: x.path, Host: x.host, Protocol: x.proto,
		Status: x.status, GRPCStatus: x.grpcStatus, TraceParent: x.traceparent, Flags: orDash(x.flags),
		Sent: x.respBytes, Received: x.reqBytes, DurationMS: float64(x.duration().Microseconds()) / 1000,
		Attempts: x.attempts,
	}
	if x.rule != nil {
		e.Route = x.rule.name()
	}
	if x.source != nil {
		e.SourceWL = x.source.Namespace + "/" + x.source.Name
	}
	if x.target.Service != nil {
		e.Service = x.target.Service.Hostname
	}
	if x.endpoint != nil {
		e.DestinationWL = x.endpoint.Namespace + "/" + x.endpoint.Name
	}
	if x.upstream.IsValid() {
		e.Upstream = x.upstream.String()
	}
	if d := &x.decision; x.hasDecision {
		e.Decision, e.Policy, e.Rule, e.Reason = "deny", d.Policy, d.Rule, d.Reason
		if d.Allow && !x.hasFlag(FlagDenied) {
			e.Decision = "allow"
		}
	}
	if x.err != nil {
		e.Error = x.err.Error()
	}
	return e
}
