package policy

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// series gathers the family name from g as "name{label=value,...}" ->
// value; a histogram gives its sample count and sum as name_count{...} and
// name_sum{...}. (prometheus/testutil would do, but its diff dependency is
// not in go.sum.)
func series(t testing.TB, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			addSeries(got, name, m)
		}
	}
	return got
}

func addSeries(got map[string]float64, name string, m *dto.Metric) {
	var labels []string
	for _, l := range m.GetLabel() {
		labels = append(labels, l.GetName()+"="+l.GetValue())
	}
	suffix := "{" + strings.Join(labels, ",") + "}"
	switch {
	case m.Counter != nil:
		got[name+suffix] = m.GetCounter().GetValue()
	case m.Gauge != nil:
		got[name+suffix] = m.GetGauge().GetValue()
	case m.Histogram != nil:
		got[name+"_count"+suffix] = float64(m.GetHistogram().GetSampleCount())
		got[name+"_sum"+suffix] = m.GetHistogram().GetSampleSum()
	}
}

func assertSeries(t *testing.T, got, want map[string]float64) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Errorf("series:\n got %v\nwant %v", seriesText(got), seriesText(want))
	}
}

func seriesText(m map[string]float64) string {
	var lines []string
	for k, v := range m {
		lines = append(lines, fmt.Sprintf("%s %g", k, v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "; ")
}

func allowBy(policy string) Decision {
	return Decision{Verdict: Verdict{Allow: true, Policy: policy}}
}

func denyBy(policy string) Decision {
	return Decision{Verdict: Verdict{Allow: false, Policy: policy}}
}

func TestMetricsDecisions(t *testing.T) {
	const name = "regomesh_policy_decisions_total"
	tests := []struct {
		name string
		run  func(m *Metrics)
		want map[string]float64
	}{
		{
			name: "allow and deny by policy",
			run: func(m *Metrics) {
				m.observeDecision(L4, allowBy("ns/a"), 1e-6)
				m.observeDecision(L4, allowBy("ns/a"), 1e-6)
				m.observeDecision(L4, denyBy("ns/b"), 1e-6)
			},
			want: map[string]float64{
				name + "{decision=allow,layer=l4,policy=ns/a}": 2,
				name + "{decision=deny,layer=l4,policy=ns/b}":  1,
			},
		},
		{
			name: "empty policy label",
			run: func(m *Metrics) {
				m.observeDecision(L7, deny(ReasonNoPolicy), 1e-6)
			},
			want: map[string]float64{
				name + "{decision=deny,layer=l7,policy=}": 1,
			},
		},
		{
			name: "unknown layer still counted",
			run: func(m *Metrics) {
				m.observeDecision(Layer("l9"), allowBy("ns/a"), 1e-6)
				m.observeCacheHit(Layer("l9"), allowBy("ns/a"))
			},
			want: map[string]float64{
				name + "{decision=allow,layer=l9,policy=ns/a}": 2,
			},
		},
		{
			name: "cache hits count as decisions",
			run: func(m *Metrics) {
				m.observeDecision(L4, allowBy("ns/a"), 1e-6)
				m.observeCacheHit(L4, allowBy("ns/a"))
				m.observeCacheHit(L4, denyBy("ns/a"))
			},
			want: map[string]float64{
				name + "{decision=allow,layer=l4,policy=ns/a}": 2,
				name + "{decision=deny,layer=l4,policy=ns/a}":  1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := NewMetrics(reg)
			tt.run(m)
			assertSeries(t, series(t, reg, name), tt.want)
		})
	}
}

func TestMetricsEvalSeconds(t *testing.T) {
	const name = "regomesh_policy_eval_seconds"
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	m.observeDecision(L4, allowBy("ns/a"), 2e-6)
	m.observeDecision(L4, denyBy("ns/b"), 3e-6)
	m.observeDecision(L7, allowBy("ns/a"), 40e-6)
	m.observeCacheHit(L4, allowBy("ns/a"))
	got := series(t, reg, name)
	want := map[string]float64{
		name + "_count{layer=l4}": 2,
		name + "_sum{layer=l4}":   got[name+"_sum{layer=l4}"],
		name + "_count{layer=l7}": 1,
		name + "_sum{layer=l7}":   40e-6,
	}
	assertSeries(t, got, want)
	if sum := got[name+"_sum{layer=l4}"]; sum < 4.99e-6 || sum > 5.01e-6 {
		t.Errorf("l4 sum = %g, want 5e-6", sum)
	}
}

func TestMetricsEvalBuckets(t *testing.T) {
	if !slices.IsSorted(evalBuckets) || evalBuckets[0] != 500e-9 || evalBuckets[len(evalBuckets)-1] != 10e-3 {
		t.Errorf("eval buckets %v: want sorted, from 500ns to 10ms", evalBuckets)
	}
}

// The eval histogram's buckets hold what is at most their bound, as
// Prometheus's do, cumulatively; what is above the last bound is in the
// count only; and a scrape's count always equals its +Inf bucket.
func TestMetricsEvalHistogramBuckets(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	for _, s := range []float64{500e-9, 600e-9, 1e-6, 15e-6, 1} {
		m.observeDecision(L7, allowBy("ns/a"), s)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var h *dto.Histogram
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			if f.GetName() == "regomesh_policy_eval_seconds" && mt.GetLabel()[0].GetValue() == "l7" {
				h = mt.GetHistogram()
			}
		}
	}
	if h == nil {
		t.Fatal("no regomesh_policy_eval_seconds{layer=l7}")
	}
	want := map[float64]uint64{500e-9: 1, 1e-6: 3, 2e-6: 3, 5e-6: 3, 10e-6: 3, 20e-6: 4, 10e-3: 4}
	got := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		got[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	for bound, n := range want {
		if got[bound] != n {
			t.Errorf("bucket le=%g: %d, want %d (all: %v)", bound, got[bound], n, got)
		}
	}
	if len(got) != len(evalBuckets) || h.GetSampleCount() != 5 || math.Abs(h.GetSampleSum()-1.0000171) > 1e-12 {
		t.Errorf("%d buckets, count %d, sum %.9f; want %d, 5, 1.0000171", len(got), h.GetSampleCount(), h.GetSampleSum(), len(evalBuckets))
	}
}

func TestMetricsBundleLoads(t *testing.T) {
	const name = "regomesh_policy_bundle_loads_total"
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{result=failure}": 0,
		name + "{result=success}": 0,
	})
	m.bundleLoad(true)
	m.bundleLoad(true)
	m.bundleLoad(false)
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{result=failure}": 1,
		name + "{result=success}": 2,
	})
}

func TestMetricsSetRevisions(t *testing.T) {
	const name = "regomesh_policy_bundle_info"
	steps := []struct {
		name      string
		revisions map[string]string
		want      map[string]float64
	}{
		{
			name:      "first set",
			revisions: map[string]string{"mesh": "r1", "team": "t1"},
			want: map[string]float64{
				name + "{bundle=mesh,revision=r1}": 1,
				name + "{bundle=team,revision=t1}": 1,
			},
		},
		{
			name:      "new revision replaces the old series",
			revisions: map[string]string{"mesh": "r2", "team": "t1"},
			want: map[string]float64{
				name + "{bundle=mesh,revision=r2}": 1,
				name + "{bundle=team,revision=t1}": 1,
			},
		},
		{
			name:      "removed bundle is deleted",
			revisions: map[string]string{"mesh": "r2"},
			want: map[string]float64{
				name + "{bundle=mesh,revision=r2}": 1,
			},
		},
		{
			name:      "empty set",
			revisions: nil,
			want:      map[string]float64{},
		},
	}
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			m.setRevisions(step.revisions)
			assertSeries(t, series(t, reg, name), step.want)
		})
	}
}

func TestMetricsSetRevisionsCopiesMap(t *testing.T) {
	const name = "regomesh_policy_bundle_info"
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	revisions := map[string]string{"mesh": "r1"}
	m.setRevisions(revisions)
	revisions["mesh"] = "changed by the caller"
	m.setRevisions(map[string]string{"mesh": "r2"})
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{bundle=mesh,revision=r2}": 1,
	})
}

func TestMetricsShadowAndDropped(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	live := Decision{Verdict: Verdict{Allow: true, Policy: "ns/web", Rule: "1"}}
	candidate := Decision{Verdict: Verdict{Allow: false, Policy: "ns/candidate", Rule: "0"}}
	m.shadowDisagreement(L4, live, candidate)
	m.shadowDisagreement(L4, live, candidate)
	m.shadowDisagreement(L7, Decision{Verdict: Verdict{Policy: "ns/deny", Rule: "x"}}, Decision{Verdict: Verdict{Allow: true, Policy: "ns/a", Rule: "open"}})
	m.decisionLogDropped(dropRateLimited)
	m.decisionLogDropped(dropBufferFull)
	m.decisionLogDropped(dropBufferFull)
	m.decisionLogDropped(dropWriteError)

	const shadow = "regomesh_policy_shadow_disagreements_total"
	assertSeries(t, series(t, reg, shadow), map[string]float64{
		shadow + "{layer=l4,policy=ns/web,rule=1,shadow_policy=ns/candidate,shadow_rule=0}": 2,
		shadow + "{layer=l7,policy=ns/deny,rule=x,shadow_policy=ns/a,shadow_rule=open}":     1,
	})
	const dropped = "regomesh_policy_decision_log_dropped_total"
	assertSeries(t, series(t, reg, dropped), map[string]float64{
		dropped + "{reason=buffer_full}":  2,
		dropped + "{reason=rate_limited}": 1,
		dropped + "{reason=write_error}":  1,
	})
}

func TestMetricsNilReceiver(t *testing.T) {
	var m *Metrics
	// None of these may panic.
	m.observeDecision(L4, allowBy("ns/a"), 1e-6)
	m.observeCacheHit(L4, allowBy("ns/a"))
	m.bundleLoad(true)
	m.setRevisions(map[string]string{"mesh": "r1"})
	m.shadowDisagreement(L7, allowBy("ns/a"), denyBy("ns/b"))
	m.decisionLogDropped(dropBufferFull)
}

func TestMetricsUnregistered(t *testing.T) {
	m := NewMetrics(nil)
	m.observeDecision(L4, allowBy("ns/a"), 1e-6)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.decisions)
	const name = "regomesh_policy_decisions_total"
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{decision=allow,layer=l4,policy=ns/a}": 1,
	})
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	first, second := NewMetrics(reg), NewMetrics(reg)
	first.observeDecision(L4, allowBy("ns/a"), 1e-6)
	second.observeDecision(L4, allowBy("ns/a"), 1e-6)
	const name = "regomesh_policy_decisions_total"
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{decision=allow,layer=l4,policy=ns/a}": 2,
	})
}

func TestMetricsConflictingRegistrationPanics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{
		Name: "regomesh_policy_decisions_total", Help: "something else",
	}))
	defer func() {
		if recover() == nil {
			t.Error("NewMetrics did not panic on a conflicting collector")
		}
	}()
	NewMetrics(reg)
}

func TestMetricsConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perG       = 1000
	)
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			policy := fmt.Sprintf("ns/p%d", g%2)
			for i := range perG {
				m.observeDecision(L4, allowBy(policy), 1e-6)
				m.observeCacheHit(L4, allowBy(policy))
				if i%100 == 0 {
					m.setRevisions(map[string]string{"mesh": fmt.Sprint(g)})
				}
			}
		})
	}
	wg.Wait()
	const name = "regomesh_policy_decisions_total"
	each := float64(goroutines / 2 * perG * 2)
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{decision=allow,layer=l4,policy=ns/p0}": each,
		name + "{decision=allow,layer=l4,policy=ns/p1}": each,
	})
	if got := len(series(t, reg, "regomesh_policy_bundle_info")); got != 1 {
		t.Errorf("bundle_info has %d series after concurrent setRevisions, want 1", got)
	}
}

func TestMetricsObserveDecisionAllocs(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	d := allowBy("ns/a")
	m.observeDecision(L4, d, 1e-6)
	allocs := testing.AllocsPerRun(1000, func() {
		m.observeDecision(L4, d, 1e-6)
	})
	if allocs != 0 {
		t.Errorf("observeDecision allocates %v times per call for a known label set, want 0", allocs)
	}
}

func BenchmarkMetricsObserveDecision(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	d := allowBy("ns/web-allow")
	m.observeDecision(L4, d, 1e-6)
	b.ReportAllocs()
	for b.Loop() {
		m.observeDecision(L4, d, 1e-6)
	}
}

func BenchmarkMetricsObserveDecisionParallel(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	d := allowBy("ns/web-allow")
	m.observeDecision(L4, d, 1e-6)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.observeDecision(L4, d, 1e-6)
		}
	})
}
