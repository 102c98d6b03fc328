//go:build race

package policy

// raceEnabled: the race detector slows evaluation about tenfold, so the
// heaviest randomized tests run fewer rounds under it (the differential
// test: 20 seeds, about 4,000 decisions, instead of 60 and 12,000); make
// test runs them again at full size without it (FULL_SIZE in the Makefile).
const raceEnabled = true
