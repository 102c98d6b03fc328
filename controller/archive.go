package controller

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/regomesh/regomesh/policy/istio"
)

// newBundle archives tr as `opa build` lays a bundle out: a .manifest
// whose revision is tr's and whose roots are every owner's package root
// the modules use (mesh/policies/<owner>, istio's at least), then the
// modules by name. A translation of Istio resources alone holds the
// files istio's WriteBundleTarGz writes; user Rego adds its namespaces'
// roots (userrego.go), which that writer does not know. The archive is
// compressed for speed: the bundle server reads it at once and writes
// the archive it serves (controller/bundleserver). entries holds each
// module's tar entry from the last archive, reused while its source
// stays; it is replaced by this archive's.
func newBundle(tr *istio.Translation, entries *tarEntries) (*Bundle, error) {
	revision := tr.Revision()
	names := slices.Sorted(maps.Keys(tr.Modules))
	next := make(tarEntries, len(names))
	var archive bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&archive, gzip.BestSpeed) // a valid level: no error
	m, err := tarEntry(".manifest", manifest(revision, names))
	if err == nil {
		_, err = gz.Write(m)
	}
	for _, name := range names {
		if err != nil {
			break
		}
		src := tr.Modules[name]
		e, ok := (*entries)[name]
		if !ok || e.src != src {
			e.src = src
			e.tar, err = tarEntry(name, []byte(src))
		}
		next[name] = e
		if err == nil {
			_, err = gz.Write(e.tar)
		}
	}
	if err == nil {
		_, err = gz.Write(make([]byte, 2*512)) // tar's end: two zero blocks
	}
	if err == nil {
		err = gz.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("controller: write bundle: %w", err)
	}
	*entries = next
	return &Bundle{Revision: revision, Translation: tr, Archive: archive.Bytes()}, nil
}

// NewBundle is the bundle the controller serves of tr alone: its archive
// as a rebuild writes it (newBundle) with no entry kept from an earlier
// one. For tests that serve a controller's bundles without a cluster.
func NewBundle(tr *istio.Translation) (*Bundle, error) {
	return newBundle(tr, &tarEntries{})
}

// tarEntries are modules' tar entries by bundle file name.
type tarEntries map[string]archivedModule

// archivedModule is one module's source and its tar entry.
type archivedModule struct {
	src string
	tar []byte
}

// tarEntry is one file's tar entry (header, data, padding), as
// archive/tar writes it: an archive is its entries end to end, then two
// zero blocks.
func tarEntry(name string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: "/" + name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Flush(); err != nil { // pads the data to a whole block
		return nil, err
	}
	return buf.Bytes(), nil
}

// manifest is a bundle's .manifest, as istio's bundle writer words it.
func manifest(revision string, modules []string) []byte {
	roots := []string{istio.Root}
	for _, name := range modules {
		if root := ownerRoot(name); root != "" && !slices.Contains(roots, root) {
			roots = append(roots, root)
		}
	}
	slices.Sort(roots)
	m, _ := json.MarshalIndent(map[string]any{"revision": revision, "roots": roots}, "", "  ")
	return append(m, '\n')
}

// ownerRoot is the mesh/policies/<owner> a bundle file lies under, or ""
// for a file elsewhere.
func ownerRoot(name string) string {
	parts := strings.SplitN(name, "/", 4)
	if len(parts) < 4 || parts[0] != "mesh" || parts[1] != "policies" {
		return ""
	}
	return strings.Join(parts[:3], "/")
}
