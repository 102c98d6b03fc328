package main

import (
	"math"
	"time"
)

// percentile returns the nearest-rank q-th percentile (0 < q <= 100) of
// sorted samples: the smallest sample with at least q% of the samples at
// or below it. It returns 0 for no samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
