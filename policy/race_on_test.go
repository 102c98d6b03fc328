//go:build race

package policy

// raceEnabled: the race detector slows evaluation about tenfold, so the
// heaviest randomized tests run fewer rounds under it (the differential
// test: 16 fixed and 6 random seeds, 4,400 decisions, instead of 60 and 20,
// 16,000); make
// test runs them again at full size without it (FULL_SIZE in the Makefile).
const raceEnabled = true
