package istio

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// manifest is the bundle's .manifest: the revision is a hash of the
// modules, so equal translations are equal bundles.
func (tr *Translation) manifest() []byte {
	roots := []string{Root}
	for name := range tr.Modules {
		if strings.HasPrefix(name, PeerRoot+"/") {
			roots = append(roots, PeerRoot)
			break
		}
	}
	m, _ := json.MarshalIndent(map[string]any{"revision": tr.Revision(), "roots": roots}, "", "  ")
	return append(m, '\n')
}

// Revision is the hex SHA-256 of the modules, names and sources.
func (tr *Translation) Revision() string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(tr.Modules)) {
		fmt.Fprintf(h, "%s\x00%d\x00%s", name, len(tr.Modules[name]), tr.Modules[name])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// files lists the bundle's files: .manifest, then the modules by name.
func (tr *Translation) files() []bundleFile {
	out := []bundleFile{{".manifest", tr.manifest()}}
	for _, name := range slices.Sorted(maps.Keys(tr.Modules)) {
		out = append(out, bundleFile{name, []byte(tr.Modules[name])})
	}
	return out
}

type bundleFile struct {
	name string
	data []byte
}

// WriteBundleDir writes the translation as an OPA bundle directory (the
// layout `opa build` and `opa run -b DIR` read), creating dir. It does
// not remove files already there. Each directory is made once, and files
// are written by a few goroutines at once: thousands of small files cost
// their system calls, not their bytes.
func (tr *Translation) WriteBundleDir(dir string) error {
	files := tr.files()
	made := map[string]bool{}
	for _, f := range files {
		d := filepath.Dir(filepath.Join(dir, filepath.FromSlash(f.name)))
		if made[d] {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
		made[d] = true
	}
	next := make(chan bundleFile)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range next {
				if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(f.name)), f.data, 0o644); err != nil && errs[i] == nil {
					errs[i] = fmt.Errorf("istio: write bundle: %w", err)
				}
			}
		}()
	}
	for _, f := range files {
		next <- f
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// writers is how many files WriteBundleDir writes at once.
const writers = 8

// WriteBundleTarGz writes the translation as an OPA bundle archive, as
// `opa build` lays it out.
func (tr *Translation) WriteBundleTarGz(w io.Writer) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, f := range tr.files() {
		hdr := &tar.Header{Name: "/" + f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	return nil
}
