package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// Directions of a connection, as the access log names them.
const (
	inbound  = "inbound"  // 15008 (HBONE) or 15006 (plaintext): to the pod
	outbound = "outbound" // 15001: from the pod
)

// conn is one connection through ztunnel, from its accept to its report:
// the facts its phases learn (who sent it, where it goes, by which route,
// what policy said, how it ended) in one place. The metrics and the
// access-log line are both read from the one report made of it
// (conn.report), so they cannot disagree.
//
// Invariants: a conn is reported exactly once, by Ztunnel.refuse when a
// phase refuses it, or when its relay ends; one goroutine at a time fills
// it (the one setting it up, then the relay's end).
type conn struct {
	direction string
	start     time.Time
	// pod is the enrolled pod whose listener accepted the connection: its
	// destination inbound, its source outbound.
	pod *pod
	// src is who sent it: the tunnel's verified peer, or a plaintext
	// client, inbound; the pod, with its socket's address, outbound.
	src state.Peer
	// dst is where it goes: the CONNECT authority, or the original
	// destination of a captured connection; invalid until known.
	dst netip.AddrPort
	// route is how an outbound connection is carried, once routed.
	route *Route
	// mtls: the connection arrived (inbound) or leaves (outbound) in
	// mutual TLS.
	mtls bool
	// decision is ztunnel's policy verdict, when it asked for one
	// (inbound, and outbound passthrough).
	decision *policy.Decision
	opened   bool // admitted: the relay started
	flag     Flag // the refusal's, or the flag of whoever closed it early
	err      error
	counts   hbone.Counts
}

// newConn starts the facts of a connection accepted on p.
func newConn(direction string, p *pod, src state.Peer) *conn {
	return &conn{direction: direction, start: time.Now(), pod: p, src: src}
}

// routed records where an outbound connection goes.
func (c *conn) routed(r Route) {
	c.route = &r
	c.mtls = r.Kind != RoutePassthrough
}

// report is what ztunnel tells of one connection: its metrics
// (metrics.go) and its access-log line (accesslog.go) are both read from
// it.
type report struct {
	start     time.Time
	duration  time.Duration
	direction string
	reporter  string // ReporterDestination inbound, ReporterSource outbound
	src, dst  party
	service   string // the destination service's hostname, outbound through one
	hbone     string // the address tunnelled to, outbound over HBONE
	mtls      bool
	// decision is "allow" or "deny": policy's, or, without a decision
	// of ztunnel's, "allow" once opened and "deny" for a peer's 401; ""
	// when refused before policy was asked.
	decision             string
	policy, rule, reason string
	flag                 Flag
	// sent and received are from the reporter's side: sent went back to
	// the client, received came from it.
	sent, received int64
	err            string
}

// party is one end of a connection as the report names it.
type party struct {
	addr      string
	principal string
	workload  string
	namespace string
}

// report is the connection as it stands at now: open (for
// istio_tcp_connections_opened_total), refused or finished.
func (c *conn) report(now time.Time) *report {
	r := &report{
		start: c.start, duration: now.Sub(c.start), direction: c.direction, mtls: c.mtls,
		src:  party{addr: addrString(c.src.Addr), principal: c.src.Principal},
		dst:  party{addr: addrString(c.dst)},
		flag: c.flag, sent: c.counts.FromServer, received: c.counts.FromClient,
	}
	if c.direction == inbound {
		r.reporter = ReporterDestination
		r.dst.principal, r.dst.workload, r.dst.namespace = c.pod.id.String(), c.pod.workload.Name, c.pod.workload.Namespace
	} else {
		r.reporter = ReporterSource
		r.src.workload, r.src.namespace = c.pod.workload.Name, c.pod.workload.Namespace
		c.reportRoute(r)
	}
	if r.flag == "" {
		r.flag = FlagNone
	}
	c.reportDecision(r)
	if c.err != nil && !errors.Is(c.err, errDenied) { // a deny is explained by its decision
		r.err = c.err.Error()
	}
	return r
}

func (c *conn) reportRoute(r *report) {
	if c.route == nil {
		return
	}
	if w := c.route.Workload; w != nil {
		r.dst.workload, r.dst.namespace = w.Name, w.Namespace
	}
	if c.route.Service != nil {
		r.service = c.route.Service.Hostname
	}
	r.dst.principal = c.route.Identity // the waypoint's, when it goes through one
	if c.route.Kind != RoutePassthrough {
		r.hbone = c.route.Dial.String()
	}
}

func (c *conn) reportDecision(r *report) {
	switch d := c.decision; {
	case d != nil:
		r.decision, r.policy, r.rule, r.reason = "deny", d.Policy, d.Rule, d.Reason
		if d.Allow {
			r.decision = "allow"
		}
	case c.opened:
		r.decision = "allow"
	case c.flag == FlagDenied: // the far end's policy: its 401
		r.decision = "deny"
	}
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// addrPortOf is a socket address as a netip.AddrPort, IPv4 unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// authorize asks the policy about in and records its verdict on c. A deny
// or an error refuses the connection (DENY): ztunnel never fails open.
func (z *Ztunnel) authorize(ctx context.Context, c *conn, in policy.Input) error {
	d, err := z.cfg.Policy.Decide(ctx, in)
	c.decision = &d
	switch {
	case err != nil:
		return refuse(FlagDenied, err)
	case !d.Allow:
		return refuse(FlagDenied, fmt.Errorf("%w: %s", errDenied, d.Reason))
	}
	return nil
}

// dial connects to addr from the pod's network (the workload itself,
// inbound; a passthrough destination, outbound), past its capture.
func (z *Ztunnel) dial(ctx context.Context, p *pod, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, z.cfg.DialTimeout)
	defer cancel()
	up, err := p.net.Dial(ctx, addr.String())
	if err != nil {
		return nil, refuse(FlagConnect, fmt.Errorf("ztunnel: dial %s in %s: %w", addr, p.id, err))
	}
	return up, nil
}

// refuse reports a connection that did not open, refused by err.
func (z *Ztunnel) refuse(c *conn, err error) {
	c.flag, c.err = flagOf(err), err
	r := c.report(time.Now())
	z.cfg.Metrics.reportOpened(r)
	z.cfg.Metrics.reportClosed(r)
	z.cfg.AccessLog.Write(r.accessEntry())
	if c.flag == FlagNoSVID {
		z.log.Error("no SVID for the source workload: connection refused (never sent in plaintext); is the SPIRE agent's admin socket reachable and ztunnel an authorized delegate?",
			"identity", c.src.Principal, "error", err)
	}
}

// relay copies both ways until the connection ends, closes both sides
// and reports it (metrics, access log). It returns at once: an idle
// connection holds no goroutine (hbone.StartRelay), and the report runs
// on the relay's. Connections that policy admitted here (input is not
// nil: inbound, and outbound passthrough) are tracked so that a policy or
// state change or a drain can close them.
func (z *Ztunnel) relay(ctx context.Context, c *conn, client, up net.Conn, input inputFunc) {
	c.opened = true
	z.cfg.Metrics.reportOpened(c.report(time.Now()))
	ctx, cancel := context.WithCancel(ctx)
	var closedBy atomic.Pointer[Flag] // whoever closed it: policy change, drain
	untrack := func() {}
	if input != nil {
		_, untrack = z.tracker.add(input, func(f Flag) { closedBy.Store(&f); cancel() })
	}
	hbone.StartRelay(ctx, client, up, func(counts hbone.Counts, err error) {
		defer untrack()
		defer cancel()
		if f := closedBy.Load(); f != nil {
			c.flag = *f
		}
		if err != nil && !errors.Is(err, context.Canceled) { // Canceled: closed on purpose (policy change, drain)
			c.err = err
		}
		c.counts = counts
		r := c.report(time.Now())
		z.cfg.Metrics.reportClosed(r)
		z.cfg.AccessLog.Write(r.accessEntry())
	})
}
