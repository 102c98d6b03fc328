package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// Print writes the HTTP phase's table and notes: latency added over
// direct at 1,000 QPS, maximum rates, memory, and the decision's share of
// the waypoint's CPU, with the goals beside them.
func (r *httpResult) Print(w io.Writer) {
	fmt.Fprintf(w, "\nHTTP/1.1 keep-alive, 1 KiB responses (fortio; medians of %d runs of %s each):\n\n", r.Repeats, r.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "metric\t direct\t L4 mesh\t waypoint\t haproxy L7\t waypoint/haproxy\t")
	us := func(s float64) *float64 { return ptr(s * 1e6) }
	for _, conns := range []int{16, 64} {
		for k, q := range []string{"p50", "p90", "p99"} {
			lat := func(p string) *float64 { return us(r.Latency[conns][p][k]) }
			add := func(p string) *float64 { return us(r.Added[conns][p][k]) }
			fmt.Fprintf(tw, "%.0f QPS, %d conns, %s (µs)\t %s\t %s\t %s\t %s\t -\t\n", r.QPS, conns, q,
				cell(lat(pathDirect)), cell(lat(pathL4)), cell(lat(pathWaypoint)), cell(lat(pathL7)))
			fmt.Fprintf(tw, "  added over direct (µs)\t -\t %s\t %s\t %s\t %s\t\n",
				cell(add(pathL4)), cell(add(pathWaypoint)), cell(add(pathL7)), ratioOf(add(pathWaypoint), add(pathL7)))
		}
	}
	fmt.Fprintf(tw, "maximum requests/s, %d conns\t -\t -\t %s\t %s\t %s\t\n", r.MaxConns,
		cell(ptr(r.Max[pathWaypoint])), cell(ptr(r.Max[pathL7])), ratioOf(ptr(r.Max[pathWaypoint]), ptr(r.Max[pathL7])))
	for _, m := range []struct{ key, name string }{{"idle", "idle"}, {"load", "after a maximum run"}, {"peak", "VmHWM, the peak"}} {
		wp, hp := mib(r.Memory[pathWaypoint][m.key]), mib(r.Memory[pathL7][m.key])
		fmt.Fprintf(tw, "middle proxy VmRSS, %s (MiB)\t -\t -\t %s\t %s\t %s\t\n", m.name, cell(wp), cell(hp), ratioOf(wp, hp))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range r.notes() {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

func ratioOf(a, b *float64) string {
	if a == nil || b == nil || *b == 0 {
		return "-"
	}
	return ratio(ptr(*a / *b))
}

func (r *httpResult) notes() []string {
	auth, decide, req := r.Decision[decisionFuncs[0]], r.Decision[decisionFuncs[1]], r.Decision[decisionFuncs[2]]
	maxRatio := 0.0
	if r.Max[pathL7] > 0 {
		maxRatio = r.Max[pathWaypoint] / r.Max[pathL7]
	}
	p99 := func(conns int, p string) float64 { return r.Added[conns][p][2] * 1e6 }
	profile := r.Profile
	if profile == "" {
		profile = "not kept; -http-cpuprofile keeps it"
	}
	return []string{
		"Paths: direct is the plain client pod to the plain server pod; L4 mesh the mesh client to the server pod through both ztunnels " +
			"(in this process); waypoint the mesh client to the http service's VIP: node-1's ztunnel, the cmd/waypoint binary in its own pod on node-1 " +
			"(a Rego decision and an HTTPRoute per request, access log off), node-2's ztunnel; haproxy L7 three haproxy processes on the same hops: " +
			"the plain client pod's (TCP, TLS out), one in its own pod on node-1 in mode http (TLS in and out, an http-request deny rule, http-reuse always), " +
			"the plain server pod's (TLS in, TCP out); TLS 1.3, AES-128-GCM, client certificates, nbthread 2 each (the waypoint may use both cores). " +
			"The load generator is fortio as a library, in a process of its own in the client pod (-loadgen), its own HTTP/1.1 client, one kept-alive connection per thread; " +
			"latency is from each request's scheduled time (no coordinated omission), 10 µs histogram buckets. " +
			"Added over direct: each run's percentile minus direct's in the same repeat, the median of those; the paths' order is rotated in each repeat.",
		fmt.Sprintf("The waypoint serves %d services (%d synthetic, without endpoints) and %d HTTPRoutes (%d on synthetic services, with a path and header match "+
			"and a weighted split each); every benchmarked request is decided by Rego and routed by an HTTPRoute. Failed requests (non-200 or socket errors), all runs: %v.",
			httpServices+1, httpServices, httpRoutes+1, httpRoutes, r.Failed),
		fmt.Sprintf("Issue #13's goals: waypoint maximum requests/s at least 0.7x haproxy's: %.2fx (%s); "+
			"p99 added at 1,000 QPS no worse than haproxy's: 16 conns %.0f vs %.0f µs (%s), 64 conns %.0f vs %.0f µs (%s); "+
			"the L7 decision under 2%% of the waypoint's CPU: %.1f%% (%s): waypoint.(*Waypoint).authorize %.1f%% (policy.(*Engine).Decide %.1f%% of it) and waypoint.RequestOf %.1f%% "+
			"(cumulative shares of the samples, %s of CPU, of %ds CPU profiles of the waypoint process, one inside each maximum-rate run, from its admin endpoint's pprof; added up: %s).",
			maxRatio, met(maxRatio >= 0.7),
			p99(16, pathWaypoint), p99(16, pathL7), met(p99(16, pathWaypoint) <= p99(16, pathL7)),
			p99(64, pathWaypoint), p99(64, pathL7), met(p99(64, pathWaypoint) <= p99(64, pathL7)),
			(auth+req)*100, met(auth+req < 0.02), auth*100, decide*100, req*100, r.ProfileCPU, profileSeconds, profile),
		"Memory: VmRSS of the middle proxy process (the waypoint; haproxy in its own pod) from /proc/<pid>/status: idle after start, with the state and routes " +
			"loaded; right after its first maximum-rate run; VmHWM, the most it ever held. This machine's cores are shared with the load generator, the HTTP " +
			"servers, the ztunnels and the other proxies: every figure is relative to the others of the same run.",
	}
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
