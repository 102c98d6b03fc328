package xds_test

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// The mesh of the ACK benchmark: issue 14's 5,000 pods over 50 nodes,
// behind 500 services; each ztunnel subscribes on demand to
// demandsPerNode services, as its pods' connections would make it.
const (
	ackPods, ackNodes, ackServices = 5000, 50, 500
	demandsPerNode                 = 10
)

// BenchmarkAckLatency measures, with 50 ztunnels subscribed over mutual
// TLS gRPC in this process, the time from a change handed to the server
// (Update, UpdateBundles) to the last ACK, recorded by the server, of
// every proxy the change is for:
//
//   - pod: one pod relabeled: its node's ztunnel and those subscribed to
//     its service;
//   - bundle: a new revision of the mesh bundle (a policy change): all 50.
//
// It covers the stream alone: not the API server, the informers, the
// controller's debounce (--debounce, 100 ms) and rebuild, nor the
// translation and signing of the policies into the bundle.
//
//	go test -run XXX -bench AckLatency -benchtime 200x ./controller/xds/
func BenchmarkAckLatency(b *testing.B) {
	ca := testpki.New(b, "td.test")
	ws, svcs := mesh(b, ackPods, ackNodes, ackServices)
	bed := newBed(b, ca, "127.0.0.1:0", snapshot(b, ws, svcs))
	bed.srv.UpdateBundles(map[string]string{wire.MeshBundle: "rev-0"})
	proxies := make([]*proxy, ackNodes)
	subscribers := map[int][]int{} // service -> the nodes subscribed to it
	for n := range ackNodes {
		proxies[n] = bed.connect(b, fmt.Sprintf("/regomesh/ztunnel/node-%d", n), fmt.Sprintf("node-%d", n))
	}
	for n, p := range proxies {
		bed.waitAcked(b, p)
		for k := range demandsPerNode {
			svc := (n*7 + k*ackNodes) % ackServices
			demandAddr(b, p, svc, svcs)
			subscribers[svc] = append(subscribers[svc], n)
		}
	}
	for _, p := range proxies {
		bed.waitAcked(b, p)
	}
	b.Logf("RSS after the initial sync of %d ztunnels (server and clients in one process): %d MiB", ackNodes, rss(b)>>20)

	b.Run("pod", func(b *testing.B) {
		var lat []time.Duration
		cpu := cpuTime()
		i := 0
		for b.Loop() {
			i++
			at := (i * 37) % len(ws)
			next := slices.Clone(ws)
			w := *ws[at]
			w.Labels = maps.Clone(w.Labels)
			w.Labels["rev"] = strconv.Itoa(i)
			next[at] = &w
			ws = next
			snap := snapshot(b, ws, svcs) // the controller's rebuild, not measured
			nodes := append([]int{at % ackNodes}, subscribers[at%ackServices]...)
			start := time.Now()
			bed.srv.Update(snap)
			version := bed.srv.Version()
			lat = append(lat, lastAck(b, bed, proxies, nodes, start, func(st xds.ProxyStatus) (time.Time, bool) {
				return st.AckedAt, st.AckedVersion == version
			}))
		}
		report(b, lat, cpuTime()-cpu)
	})
	b.Run("bundle", func(b *testing.B) {
		var lat []time.Duration
		all := make([]int, ackNodes)
		for n := range all {
			all[n] = n
		}
		cpu := cpuTime()
		i := 0
		for b.Loop() {
			i++
			rev := fmt.Sprintf("rev-%d", i)
			start := time.Now()
			bed.srv.UpdateBundles(map[string]string{wire.MeshBundle: rev})
			lat = append(lat, lastAck(b, bed, proxies, all, start, func(st xds.ProxyStatus) (time.Time, bool) {
				return st.BundlesAckedAt, st.Bundles[wire.MeshBundle] == rev
			}))
		}
		report(b, lat, cpuTime()-cpu)
	})
	b.Logf("RSS at the end: %d MiB", rss(b)>>20)
}

func demandAddr(b *testing.B, p *proxy, svc int, svcs []*state.Service) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.client.Demand(ctx, svcs[svc].VIPs[0]); err != nil {
		b.Fatal(err)
	}
}

// lastAck waits until each proxy of nodes has ACKed (acked), and returns
// how long after start the last of them did, by the server's clock.
func lastAck(b *testing.B, bed *bed, proxies []*proxy, nodes []int, start time.Time, acked func(xds.ProxyStatus) (time.Time, bool)) time.Duration {
	b.Helper()
	var last time.Time
	for _, n := range nodes {
		at := waitFor(b, func() (time.Time, bool) {
			st, _ := bed.srv.Proxy(proxies[n].id.String())
			return acked(st)
		}, "node-%d's ACK", n)
		if at.After(last) {
			last = at
		}
	}
	return last.Sub(start)
}

func report(b *testing.B, lat []time.Duration, cpu time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 { // nearest rank
		return float64(lat[int(math.Ceil(p*float64(len(lat))))-1].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(len(lat)), "cpu-ms/change")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is the process's resident set size, from /proc/self/status.
func rss(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}
