package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ReadBundles reads every path with ReadBundle, in order, stopping at the
// first that fails.
func ReadBundles(paths []string, v *Verification) ([]*Bundle, error) {
	out := make([]*Bundle, 0, len(paths))
	for _, path := range paths {
		b, err := ReadBundle(path, v)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// BundlesStamp summarises the names, modification times and sizes of the
// files under paths. When it changes, the bundles may have changed and are
// worth reading again; watchers poll it, which survives the file swaps
// (editors, ConfigMap symlinks) that inotify misses.
//
// A file's time has the granularity of the file system's clock (a kernel
// tick, or seconds on some), so a file rewritten with the same size soon
// after a stamp was taken can leave it unchanged, and a watcher would keep
// what it read before the rewrite. While a file is younger than
// settleTime the stamp says so; once they are all older it changes once
// more, and a watcher reads the bundles again, as they have settled.
func BundlesStamp(paths []string) string {
	return bundlesStamp(paths, time.Now())
}

// settleTime is the age beyond which a file's time is trusted to tell a
// later rewrite: above the granularity of common file systems' clocks.
const settleTime = 2 * time.Second

func bundlesStamp(paths []string, now time.Time) string {
	var b strings.Builder
	settled := true
	for _, root := range paths {
		filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err == nil {
				fmt.Fprintf(&b, "%s:%d:%d;", path, info.ModTime().UnixNano(), info.Size())
				settled = settled && now.Sub(info.ModTime()) >= settleTime
			}
			return nil
		})
	}
	if !settled {
		b.WriteString("unsettled")
	}
	return b.String()
}
