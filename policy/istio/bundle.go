package istio

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
// not remove files already there.
func (tr *Translation) WriteBundleDir(dir string) error {
	for _, f := range tr.files() {
		path := filepath.Join(dir, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
		if err := os.WriteFile(path, f.data, 0o644); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
	}
	return nil
}

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
