package spire

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	for _, tc := range []struct {
		name     string
		min, max time.Duration
	}{
		{"first", 50 * time.Millisecond, 100 * time.Millisecond},
		{"doubled", 100 * time.Millisecond, 200 * time.Millisecond},
		{"doubled again", 200 * time.Millisecond, 400 * time.Millisecond},
		{"again", 400 * time.Millisecond, 800 * time.Millisecond},
		{"capped", 500 * time.Millisecond, time.Second},
		{"stays capped", 500 * time.Millisecond, time.Second},
	} {
		if d := b.delay(); d < tc.min || d > tc.max {
			t.Errorf("%s: delay %s, want within [%s, %s]", tc.name, d, tc.min, tc.max)
		}
	}
	b.reset()
	if d := b.delay(); d > 100*time.Millisecond {
		t.Errorf("after reset: delay %s, want at most the minimum", d)
	}
}
