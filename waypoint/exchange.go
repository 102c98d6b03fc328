package waypoint

import (
	"net/netip"
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
	rule     *routeRule        // the HTTPRoute rule that routed the request, if any
	balanced []*state.Workload // the endpoints the balancer chose among, until finishEndpoint

	method, path, host, proto, traceparent string
	grpc                                   bool

	decision   *policy.Decision
	status     int
	grpcStatus string
	flags      string
	reqBytes   int64
	respBytes  int64
	reqCount   atomic.Int64 // request body bytes, counted as the proxy reads them
	err        error
}

func (x *exchange) duration() time.Duration { return x.end.Sub(x.start) }

// decided records the policy's answer.
func (x *exchange) decided(d policy.Decision) { x.decision = &d }

// fail records a failure with its response flag.
func (x *exchange) fail(flag string, err error) {
	x.flags, x.err = flag, err
}

func (x *exchange) entry() AccessEntry {
	e := AccessEntry{
		Time: x.start, Kind: x.kind, Source: x.peer.Addr.String(), SourceID: x.peer.Principal,
		Destination: x.target.Addr.String(), Method: x.method, Path: x.path, Host: x.host, Protocol: x.proto,
		Status: x.status, GRPCStatus: x.grpcStatus, TraceParent: x.traceparent, Flags: orDash(x.flags),
		Sent: x.respBytes, Received: x.reqBytes, DurationMS: float64(x.duration().Microseconds()) / 1000,
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
	if d := x.decision; d != nil {
		e.Decision, e.Policy, e.Rule, e.Reason = "deny", d.Policy, d.Rule, d.Reason
		if d.Allow && x.flags != FlagDenied {
			e.Decision = "allow"
		}
	}
	if x.err != nil {
		e.Error = x.err.Error()
	}
	return e
}
