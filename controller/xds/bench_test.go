package xds_test

import (
	"fmt"
	"maps"
	"testing"

	"github.com/regomesh/regomesh/internal/testpki"
)

// BenchmarkPodChange measures what one pod's change costs on the wire
// against the full state: 5,000 workloads on 50 nodes behind 500
// services, one waypoint subscribed (a waypoint is sent the whole state;
// a ztunnel its node's scope, whose size it reports too). Each iteration
// relabels one pod, updates the server and waits for the waypoint's ACK.
//
//	go test -run XXX -bench PodChange ./controller/xds/
func BenchmarkPodChange(b *testing.B) {
	ca := testpki.New(b, "td.test")
	ws, svcs := mesh(b, 5000, 50, 500)
	ws[1].Waypoint = "shop/pod-0" // pod-0's identity, shop/default, is a waypoint's
	bed := newBed(b, ca, "127.0.0.1:0", snapshot(b, ws, svcs))
	p := bed.connect(b, "/ns/shop/sa/default", "")
	full := bed.waitAcked(b, p).TotalBytes
	z := bed.connect(b, "/regomesh/ztunnel/node-0", "node-0")
	scope := bed.waitAcked(b, z).TotalBytes
	z.stop()
	var changeBytes, pushes int64
	i := 0
	for b.Loop() {
		i++
		next := append(ws[:0:0], ws...)
		w := *ws[i%len(ws)]
		w.Labels = maps.Clone(w.Labels)
		w.Labels["rev"] = fmt.Sprint(i)
		next[i%len(ws)] = &w
		ws = next
		bed.srv.Update(snapshot(b, ws, svcs))
		st := bed.waitAcked(b, p)
		if st.LastPush.Resources != 1 || st.LastPush.Removed != 0 {
			b.Fatalf("one pod's change pushed %+v", st.LastPush)
		}
		changeBytes += int64(st.LastPush.Bytes)
		pushes++
	}
	perChange := float64(changeBytes) / float64(pushes)
	b.ReportMetric(float64(full), "full-state-bytes")
	b.ReportMetric(float64(scope), "ztunnel-scope-bytes")
	b.ReportMetric(perChange, "bytes/change")
	b.ReportMetric(float64(full)/perChange, "full/change")
}
