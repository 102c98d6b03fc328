package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
func BundlesStamp(paths []string) string {
	var b strings.Builder
	for _, root := range paths {
		filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err == nil {
				fmt.Fprintf(&b, "%s:%d:%d;", path, info.ModTime().UnixNano(), info.Size())
			}
			return nil
		})
	}
	return b.String()
}
