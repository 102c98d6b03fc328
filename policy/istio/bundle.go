package istio

import (
	"archive/tar"
	"bufio"
	"bytes"
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
	"strconv"
	"strings"
	"sync"
)

// manifest is the bundle's .manifest: the revision is a hash of the
// modules (names, the modules' names sorted), so equal translations are
// equal bundles.
func (tr *Translation) manifest(names []string) []byte {
	roots := []string{Root}
	for name := range tr.Modules {
		if strings.HasPrefix(name, PeerRoot+"/") {
			roots = append(roots, PeerRoot)
			break
		}
	}
	m, _ := json.MarshalIndent(map[string]any{"revision": tr.revision(names), "roots": roots}, "", "  ")
	return append(m, '\n')
}

// Revision is the hex SHA-256 of the modules, names and sources.
func (tr *Translation) Revision() string {
	return tr.revision(slices.Sorted(maps.Keys(tr.Modules)))
}

// revision is Revision, the modules' names sorted.
func (tr *Translation) revision(names []string) string {
	h := sha256.New()
	for _, name := range names {
		src := tr.Modules[name]
		io.WriteString(h, name)
		io.WriteString(h, "\x00"+strconv.Itoa(len(src))+"\x00")
		io.WriteString(h, src)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// files lists the bundle's files: .manifest, then the modules by name.
func (tr *Translation) files() []bundleFile {
	names := slices.Sorted(maps.Keys(tr.Modules))
	out := make([]bundleFile, 0, 1+len(names))
	out = append(out, bundleFile{".manifest", tr.manifest(names)})
	for _, name := range names {
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
// `opa build` lays it out. It compresses at gzip's best speed: thousands
// of modules are megabytes of Rego, which the default level takes several
// times longer to compress, for an archive two thirds the size. Each
// file's tar record (header, data, padding) is made on every processor
// at once: archive/tar writes a record from its file alone, so the
// records laid end to end are the stream one tar.Writer writes.
func (tr *Translation) WriteBundleTarGz(w io.Writer) error {
	files := tr.files()
	records := make([][]byte, len(files))
	errs := make([]error, len(files))
	forEach(len(files), func(i int) { records[i], errs[i] = tarRecord(files[i]) })
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	buf := bufio.NewWriterSize(gz, 64<<10)
	for _, r := range records {
		if _, err := buf.Write(r); err != nil {
			return fmt.Errorf("istio: write bundle: %w", err)
		}
	}
	if err := tar.NewWriter(buf).Close(); err != nil { // the end-of-archive blocks
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	if err := buf.Flush(); err != nil {
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("istio: write bundle: %w", err)
	}
	return nil
}

// tarRecord is f's tar record: its header, its data and the padding to the
// next 512-byte block.
func tarRecord(f bundleFile) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(3*512 + len(f.data))
	tw := tar.NewWriter(&b)
	hdr := &tar.Header{Name: "/" + f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(f.data); err != nil {
		return nil, err
	}
	err := tw.Flush()
	return b.Bytes(), err
}
