package state

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatchAppliesChangesAndKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	write := func(s string) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as editors and ConfigMaps do
			t.Fatal(err)
		}
	}
	first := "workloads: [{name: a, namespace: n, ips: [10.0.0.1]}]"
	write(first)
	applied := make(chan *Snapshot, 4)
	rejected := make(chan error, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watch(ctx, path, []byte(first), Options{}, 10*time.Millisecond, func(s *Snapshot) { applied <- s }, func(err error) { rejected <- err })

	write("workloads: [{name: a, namespace: n, ips: [10.0.0.1]}, {name: b, namespace: n, ips: [10.0.0.2]}]")
	if s := waitFor(t, applied); len(s.Workloads) != 2 {
		t.Errorf("applied %d workloads, want 2", len(s.Workloads))
	}
	write("workloads: [{name: a, namespace: n, ips: [not-an-ip]}]")
	if err := waitFor(t, rejected); err == nil {
		t.Error("a broken file must be rejected")
	}
	select {
	case s := <-applied:
		t.Errorf("a broken file was applied: %+v", s)
	case <-time.After(50 * time.Millisecond):
	}
}

func waitFor[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived in 5s")
	}
	var zero T
	return zero
}
