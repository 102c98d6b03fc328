package ztunnel

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regomesh/regomesh/policy"
)

// decideByPort allows ports in the set: a real Authorizer is the engine;
// this one lets the test change the answer between calls.
type decideByPort struct{ allowed atomic.Pointer[map[int]bool] }

func (d *decideByPort) Decide(_ context.Context, in policy.Input) (policy.Decision, error) {
	if (*d.allowed.Load())[in.Destination.Port] {
		return policy.Decision{Verdict: policy.Verdict{Allow: true}}, nil
	}
	return policy.Decision{Verdict: policy.Verdict{Policy: "ns/p", Rule: "0", Reason: "denied"}}, nil
}

func TestTrackerRecheckClosesDenied(t *testing.T) {
	tr := newTracker()
	var closedFlags [3]atomic.Value
	for i, port := range []int{80, 443, 8080} {
		in := policy.Input{Layer: policy.L4, Destination: policy.Destination{Port: port}}
		_, done := tr.add(in, func(flag string) { closedFlags[i].Store(flag) })
		defer done()
	}
	authz := &decideByPort{}
	authz.allowed.Store(&map[int]bool{80: true, 8080: true})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if n := tr.recheck(context.Background(), authz, log); n != 1 {
		t.Errorf("closed %d, want 1", n)
	}
	if closedFlags[1].Load() != FlagPolicyClose || closedFlags[0].Load() != nil || closedFlags[2].Load() != nil {
		t.Errorf("closed flags = %v %v %v", closedFlags[0].Load(), closedFlags[1].Load(), closedFlags[2].Load())
	}
}

func TestTrackerDrain(t *testing.T) {
	tr := newTracker()
	_, quickDone := tr.add(policy.Input{}, func(string) {})
	var slowFlag atomic.Value
	var slowDone func()
	_, slowDone = tr.add(policy.Input{}, func(flag string) { slowFlag.Store(flag); slowDone() })
	go func() { time.Sleep(10 * time.Millisecond); quickDone() }()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n := tr.drain(ctx); n != 1 || slowFlag.Load() != FlagDrained {
		t.Errorf("drain closed %d (flag %v), want the slow one only", n, slowFlag.Load())
	}
	if n := tr.drain(context.Background()); n != 0 {
		t.Errorf("a second drain closed %d", n)
	}
}
