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
// several times per request. The deadlines that must not pass are an
// hour away, so the test does not depend on how busy the machine is.
func TestDeadlineMovesOneTimer(t *testing.T) {
	const patience = 30 * time.Second // for the closes that must happen, on a busy machine

	var d deadline
	if d.wait() != nil {
		t.Fatal("a new deadline has a channel: waiters would not block forever")
	}

	d.set(time.Now().Add(10 * time.Millisecond))
	if !closedWithin(d.wait(), patience) {
		t.Fatal("a deadline 10ms ahead did not pass")
	}
	timer := d.timer

	// Moved an hour ahead: a firing for the deadline before (which a
	// move can lose the race to) must not close the new one's channel.
	d.set(time.Now().Add(time.Hour))
	d.fire()
	if isClosed(d.wait()) {
		t.Fatal("a firing for an earlier deadline closed the channel of a deadline an hour ahead")
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

	// Set, then cleared: the timer is disarmed, and a firing already on
	// its way closes nothing.
	d.set(time.Now().Add(time.Hour))
	ch := d.wait()
	d.set(time.Time{})
	if d.timer.Stop() {
		t.Error("a cleared deadline left its timer armed")
	}
	d.fire()
	if isClosed(ch) {
		t.Fatal("a cleared deadline passed")
	}

	if d.timer != timer {
		t.Error("setting the deadline again made a new timer")
	}

	// Released (the stream closed): the timer is disarmed and stays so,
	// even for a deadline set afterwards.
	d.set(time.Now().Add(time.Hour))
	d.release()
	if d.timer.Stop() {
		t.Error("a released deadline left its timer armed")
	}
	d.set(time.Now().Add(time.Hour))
	if d.timer.Stop() {
		t.Error("a deadline set after release armed the timer")
	}
	d.set(time.Now().Add(-time.Second))
	if !isClosed(d.wait()) {
		t.Error("after release, a deadline in the past is not passed")
	}
}

// A deadline whose time the wall clock has not reached when its timer
// fires (no monotonic reading, and the clock stepped back) still passes:
// the timer is armed again for what is left.
func TestDeadlineFiredEarlyArmsAgain(t *testing.T) {
	var d deadline
	d.set(time.Now().Add(time.Hour))
	d.mu.Lock()
	d.at = time.Now().Add(20 * time.Millisecond).Round(0) // as if the firing came 20ms before the wall-clock deadline
	d.mu.Unlock()
	d.fire()
	if isClosed(d.wait()) {
		t.Fatal("fired before its deadline, the channel closed")
	}
	if !closedWithin(d.wait(), 30*time.Second) {
		t.Fatal("fired before its deadline, it never passed: the timer was not armed again")
	}
	d.release()
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
