package state

import (
	"bytes"
	"context"
	"os"
	"time"
)

// Watch reloads a local-config file whenever its content differs from
// the last version seen (loaded: the content the caller already applied),
// checking every interval (polling survives editors' rename-and-replace
// and Kubernetes ConfigMap symlink swaps, which inotify watches miss).
// apply receives each good snapshot; a file that fails to read or validate
// is reported to reject and the last good snapshot stays in force. Watch
// returns when ctx is done.
func Watch(ctx context.Context, path string, loaded []byte, opts Options, interval time.Duration, apply func(*Snapshot), reject func(error)) {
	last := loaded
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			reject(err)
			continue
		}
		if bytes.Equal(data, last) {
			continue
		}
		last = data
		snap, err := Decode(data, opts)
		if err != nil {
			reject(err)
			continue
		}
		apply(snap)
	}
}
