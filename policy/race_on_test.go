//go:build race

package policy

// raceEnabled: the race detector slows evaluation about tenfold, so the
// heaviest randomized tests run fewer rounds under it.
const raceEnabled = true
