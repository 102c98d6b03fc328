package state

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
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
	testgo.Go(t, func(ctx context.Context) {
		Watch(ctx, path, []byte(first), Options{}, 10*time.Millisecond, func(s *Snapshot) { send(ctx, applied, s) }, func(err error) { send(ctx, rejected, err) })
	})

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

// An empty file, what a reader sees of a file being rewritten in place,
// is rejected and the last good state stays.
func TestWatchRejectsAnEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	first := "workloads: [{name: a, namespace: n, ips: [10.0.0.1]}]"
	if err := os.WriteFile(path, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	applied := make(chan *Snapshot, 4)
	rejected := make(chan error, 4)
	testgo.Go(t, func(ctx context.Context) {
		Watch(ctx, path, []byte(first), Options{}, time.Millisecond, func(s *Snapshot) { send(ctx, applied, s) }, func(err error) { send(ctx, rejected, err) })
	})
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(t, rejected); !strings.Contains(err.Error(), "is empty") {
		t.Errorf("rejected with %v, want the file named empty", err)
	}
	select {
	case s := <-applied:
		t.Errorf("an empty file was applied: %+v", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// send delivers v unless the test has ended: a watcher blocked on a full
// channel would never return.
func send[T any](ctx context.Context, ch chan<- T, v T) {
	select {
	case ch <- v:
	case <-ctx.Done():
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

// A file rewritten in place, same size, with its modification time put
// back (what a coarse filesystem clock does to a quick rewrite) is still
// picked up, by the periodic full read; a rewrite with the same content
// applies nothing.
func TestWatchSeesQuietRewrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	first := "workloads: [{name: a, namespace: n, ips: [10.0.0.1]}]"
	if err := os.WriteFile(path, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	applied := make(chan *Snapshot, 4)
	// The watcher ends before the test does: before, it could stat the
	// removed temporary directory and report into a finished test.
	testgo.Go(t, func(ctx context.Context) {
		Watch(ctx, path, []byte(first), Options{}, time.Millisecond, func(s *Snapshot) { send(ctx, applied, s) }, func(err error) { t.Error(err) })
	})

	rewrite := func(content string) { // in place, one write: same inode and size
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte(content), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	rewrite(first)
	select {
	case s := <-applied:
		t.Fatalf("the same content was applied again: %+v", s)
	case <-time.After(3 * fullCheckEvery * time.Millisecond):
	}
	rewrite("workloads: [{name: b, namespace: n, ips: [10.0.0.1]}]") // same size
	if s := waitFor(t, applied); len(s.Workloads) != 1 || s.Workloads[0].Name != "b" {
		t.Errorf("applied %+v, want workload b", s.Workloads)
	}
}
