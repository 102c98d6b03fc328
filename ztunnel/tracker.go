package ztunnel

import (
	"context"
	"log/slog"
	"sync"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// tracker holds the open connections that policy admitted (inbound ones,
// and outbound passthrough), so a policy or state change can re-check them
// (closing those now denied) and a shutdown can drain them.
//
// Invariant: a connection is in open from its admission until its copy
// loops end; close may be called on it any number of times, from any
// goroutine, and ends both directions.
type tracker struct {
	mu   sync.Mutex
	open map[*trackedConn]struct{}
	done sync.WaitGroup
}

// trackedConn is one admitted connection.
type trackedConn struct {
	// input builds the connection's policy input from a state: the state
	// in force at each re-check, so new labels count, not the ones the
	// connection was admitted with. An error (the workload left the
	// state) closes the connection.
	input  inputFunc
	close  func(Flag)
	closed sync.Once
}

// inputFunc builds a connection's policy input from the state in force.
type inputFunc func(*state.Snapshot) (policy.Input, error)

func newTracker() *tracker { return &tracker{open: map[*trackedConn]struct{}{}} }

// add registers a connection; the returned func removes it when it ends.
func (t *tracker) add(input inputFunc, close func(Flag)) (*trackedConn, func()) {
	c := &trackedConn{input: input, close: close}
	t.mu.Lock()
	t.open[c] = struct{}{}
	t.done.Add(1)
	t.mu.Unlock()
	return c, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if _, ok := t.open[c]; ok {
			delete(t.open, c)
			t.done.Done()
		}
	}
}

func (c *trackedConn) shut(flag Flag) { c.closed.Do(func() { c.close(flag) }) }

func (t *tracker) snapshot() []*trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*trackedConn, 0, len(t.open))
	for c := range t.open {
		out = append(out, c)
	}
	return out
}

// recheck decides every open connection again, with its input rebuilt
// from snap, and closes the ones the policy in force now denies (an error
// building the input or deciding closes too: fail closed). It returns how
// many it closed.
func (t *tracker) recheck(ctx context.Context, authz policy.Authorizer, snap *state.Snapshot, log *slog.Logger) int {
	closed := 0
	for _, c := range t.snapshot() {
		in, err := c.input(snap)
		var d policy.Decision
		if err == nil {
			d, err = authz.Decide(ctx, in)
		}
		if err == nil && d.Allow {
			continue
		}
		log.Info("closing connection denied by new policy or state",
			"src", in.Source.IP, "src_identity", in.Source.Principal,
			"dst", in.Destination.IP, "dst_port", in.Destination.Port,
			"policy", d.Policy, "rule", d.Rule, "reason", d.Reason, "error", err)
		c.shut(FlagPolicyClose)
		closed++
	}
	return closed
}

// drain waits for the open connections to end by themselves until ctx is
// done, then closes the rest. It returns how many it had to close.
func (t *tracker) drain(ctx context.Context) int {
	ended := make(chan struct{})
	go func() { t.done.Wait(); close(ended) }()
	select {
	case <-ended:
		return 0
	case <-ctx.Done():
	}
	rest := t.snapshot()
	for _, c := range rest {
		c.shut(FlagDrained)
	}
	<-ended
	return len(rest)
}
