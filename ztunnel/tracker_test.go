package ztunnel

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// portPolicy writes a bundle allowing exactly the given destination ports.
func portPolicy(t *testing.T, ports string) *policy.Bundle {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		".manifest": `{"roots": ["mesh/policies/test"]}`,
		"p.rego": `package mesh.policies.test.ports

allow_scope contains {"policy": "test/ports"}

allow contains {"policy": "test/ports", "rule": "listed"} if input.destination.port in ` + ports + `
`,
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrackerRecheckClosesDenied(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	engine, err := policy.NewEngine(policy.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := engine.Load(ctx, portPolicy(t, "{80, 443, 8080}")); err != nil {
		t.Fatal(err)
	}
	tr := newTracker()
	var closedFlags [3]atomic.Value
	for i, port := range []int{80, 443, 8080} {
		in := policy.Input{Layer: policy.L4, Destination: policy.Destination{Port: port}}
		_, done := tr.add(fixedInput(in), func(flag Flag) { closedFlags[i].Store(flag) })
		defer done()
	}
	if n := tr.recheck(ctx, engine, nil, log); n != 0 {
		t.Fatalf("closed %d under a policy allowing all three", n)
	}
	if err := engine.Load(ctx, portPolicy(t, "{80, 8080}")); err != nil {
		t.Fatal(err)
	}
	if n := tr.recheck(ctx, engine, nil, log); n != 1 {
		t.Errorf("closed %d, want 1", n)
	}
	if closedFlags[1].Load() != Flag(FlagPolicyClose) || closedFlags[0].Load() != nil || closedFlags[2].Load() != nil {
		t.Errorf("closed flags = %v %v %v", closedFlags[0].Load(), closedFlags[1].Load(), closedFlags[2].Load())
	}
}

// fixedInput is an inputFunc whose input does not depend on the state.
func fixedInput(in policy.Input) inputFunc {
	return func(*state.Snapshot) (policy.Input, error) { return in, nil }
}

func TestTrackerDrain(t *testing.T) {
	tr := newTracker()
	_, quickDone := tr.add(fixedInput(policy.Input{}), func(Flag) {})
	var slowFlag atomic.Value
	var slowDone func()
	_, slowDone = tr.add(fixedInput(policy.Input{}), func(flag Flag) { slowFlag.Store(flag); slowDone() })
	ctx, deadline := context.WithCancel(context.Background())
	defer deadline()
	drained := make(chan int, 1)
	testgo.Go(t, func(context.Context) { drained <- tr.drain(ctx) })
	quickDone() // the quick one ends by itself, before the deadline
	deadline()
	if n := <-drained; n != 1 || slowFlag.Load() != Flag(FlagDrained) {
		t.Errorf("drain closed %d (flag %v), want the slow one only", n, slowFlag.Load())
	}
	if n := tr.drain(context.Background()); n != 0 {
		t.Errorf("a second drain closed %d", n)
	}
}
