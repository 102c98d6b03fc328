package hbone

import (
	"testing"
	"time"
)

// closedWithin reports whether ch is closed within d (a nil channel never is).
func closedWithin(ch chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// The one timer a deadline keeps fires for the deadline in force, however
// often it is moved: net/http's server moves a stream's read deadline
// several times per request.
func TestDeadlineMovesOneTimer(t *testing.T) {
	const patience = 30 * time.Second // for the closes that must happen, on a busy machine
	const quiet = 150 * time.Millisecond

	var d deadline
	if d.wait() != nil {
		t.Fatal("a new deadline has a channel: waiters would not block forever")
	}

	d.set(time.Now().Add(10 * time.Millisecond))
	if !closedWithin(d.wait(), patience) {
		t.Fatal("a deadline 10ms ahead did not pass")
	}
	timer := d.timer

	// Moved later before it fires: a firing for the old deadline, if it
	// comes, must not close the channel of the new one.
	d.set(time.Now().Add(20 * time.Millisecond))
	d.set(time.Now().Add(time.Hour))
	if closedWithin(d.wait(), quiet) {
		t.Fatal("a deadline moved an hour ahead passed at the earlier one")
	}
	d.fire() // what a firing for the old deadline does when it wins the race with the move
	if isClosed(d.wait()) {
		t.Fatal("a late firing for an earlier deadline closed the channel of a deadline an hour ahead")
	}

	// Moved earlier: it passes.
	d.set(time.Now().Add(10 * time.Millisecond))
	if !closedWithin(d.wait(), patience) {
		t.Fatal("a deadline moved 10ms ahead did not pass")
	}

	// In the past: passed at once. Cleared: no channel.
	d.set(time.Now().Add(-time.Second))
	if !isClosed(d.wait()) {
		t.Fatal("a deadline in the past is not passed")
	}
	d.set(time.Time{})
	if d.wait() != nil {
		t.Fatal("a cleared deadline still has a passed channel")
	}

	// Set, then cleared before it passes: never passes.
	d.set(time.Now().Add(10 * time.Millisecond))
	ch := d.wait()
	d.set(time.Time{})
	if closedWithin(ch, quiet) {
		t.Fatal("a cleared deadline passed")
	}

	if d.timer != timer {
		t.Error("setting the deadline again made a new timer")
	}

	// Released (the stream closed): the timer no longer fires.
	d.set(time.Now().Add(10 * time.Millisecond))
	ch = d.wait()
	d.release()
	if closedWithin(ch, quiet) {
		t.Fatal("a released deadline's timer fired")
	}
}

// Setting a deadline costs no allocation once its timer exists, as
// net/http sets and clears one around every request.
func TestDeadlineSetAllocates(t *testing.T) {
	var d deadline
	d.set(time.Now().Add(time.Hour))
	allocs := testing.AllocsPerRun(100, func() {
		d.set(time.Now().Add(time.Hour))
		d.set(time.Time{})
	})
	d.release()
	if allocs != 0 {
		t.Errorf("moving and clearing a deadline allocates %v times, want 0", allocs)
	}
}
