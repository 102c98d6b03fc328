package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"
)

// fullCheckEvery is how many checks pass between full reads of an
// unchanged-looking file: a rewrite inside one tick of a coarse
// filesystem clock keeps its size and modification time.
const fullCheckEvery = 60

// Watch reloads a local-config file whenever its content differs from
// the last version seen (loaded: the content the caller already applied),
// checking every interval (polling survives editors' rename-and-replace
// and Kubernetes ConfigMap symlink swaps, which inotify watches miss).
// apply receives each good snapshot; a file that fails to read or validate
// is reported to reject and the last good snapshot stays in force, as
// does an empty file, which is what a reader sees of a file being
// rewritten in place. Watch returns when ctx is done.
//
// A check costs a stat: the file is read only when it is another file or
// its size or modification time moved, and every fullCheckEvery checks;
// what is read is compared by SHA-256, so a rewrite with the same content
// applies nothing, and a cluster-sized file is neither re-read every tick
// nor kept in memory.
func Watch(ctx context.Context, path string, loaded []byte, opts Options, interval time.Duration, apply func(*Snapshot), reject func(error)) {
	last := sha256.Sum256(loaded)
	var seen os.FileInfo // as of the last read
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for checks := 1; ; checks++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		info, err := os.Stat(path)
		if err != nil {
			reject(err)
			continue
		}
		if unchanged(seen, info) && checks%fullCheckEvery != 0 {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			reject(err)
			continue
		}
		seen = info // stat before read: a change in between shows next time
		sum := sha256.Sum256(data)
		if sum == last {
			continue
		}
		last = sum
		if len(bytes.TrimSpace(data)) == 0 {
			reject(fmt.Errorf("state: %s is empty: kept the last good state (a write in progress? an explicit `workloads: []` clears it)", path))
			continue
		}
		snap, err := Decode(data, opts)
		if err != nil {
			reject(err)
			continue
		}
		apply(snap)
	}
}

// unchanged reports whether now describes the same file as before, with
// the same size and modification time.
func unchanged(before, now os.FileInfo) bool {
	return before != nil && os.SameFile(before, now) && before.Size() == now.Size() && before.ModTime().Equal(now.ModTime())
}
