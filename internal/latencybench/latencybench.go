// Package latencybench measures the latency of each call a benchmark
// makes, for benchmarks whose figures are percentiles, not only ns/op.
package latencybench

import (
	"slices"
	"testing"
	"time"
)

// Measure runs op(i) for i in [0, b.N) and reports the p50, p99 and mean
// latency of the calls (the mean from the same samples, so it excludes
// the loop's own work, which ns/op includes; two clock reads per call are
// in every figure: BenchmarkClockOverhead in policy says what they cost).
// The first 2^20 calls are sampled.
func Measure(b *testing.B, op func(i int)) {
	samples := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		op(i)
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(start))
		}
	}
	b.StopTimer()
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(samples[len(samples)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(sum.Nanoseconds())/float64(len(samples)), "mean-ns")
}
