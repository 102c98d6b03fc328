package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// fastModules reads a bundle's modules with fastParse where it can,
// without changing what OPA's bundle reader does with the rest: it keeps
// each module fastParse reads from the reader, and restore puts it back
// in its place, after doing what the reader does with a module: give it
// the Rego version the manifest says (parsing it with OPA's parser unless
// that is v1) and check that the manifest's roots permit its package, as
// the reader does, with the reader's message. Only for unsigned reads (no
// verification configured): the reader verifies the files it reads.
type fastModules struct {
	bundle.DirectoryLoader
	baseDir string
	// limit is the reader's: a file this long or longer is refused.
	limit int64
	// modules are the bundle's modules in the loader's order: those kept
	// from the reader with their file and syntax tree, the others nil.
	modules []*bundle.ModuleFile
}

func newFastModules(l bundle.DirectoryLoader, baseDir string) *fastModules {
	return &fastModules{DirectoryLoader: l, baseDir: baseDir, limit: bundle.DefaultSizeLimitBytes + 1}
}

// NextFile is the wrapped loader's next file but the modules fastParse
// reads.
func (l *fastModules) NextFile() (*bundle.Descriptor, error) {
	for {
		f, err := l.DirectoryLoader.NextFile()
		if err != nil || !strings.HasSuffix(f.Path(), bundle.RegoExt) {
			return f, err
		}
		var buf bytes.Buffer
		_, err = f.Read(&buf, l.limit)
		if cerr := f.Close(); err == nil || err == io.EOF {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		// What the reader makes of the file (bundle.Reader.Read).
		rel := filepath.ToSlash(f.Path())
		name := rel
		if l.baseDir != "" {
			name = filepath.Join(l.baseDir, rel)
		}
		// The source is kept as long as the bundle: exactly its size.
		src := bytes.Clone(buf.Bytes())
		m, ok := fastParse(name, src)
		if !ok || int64(len(src)) >= l.limit || !plainSegments(m.Package.Path) {
			l.modules = append(l.modules, nil)
			return bundle.NewDescriptor(f.URL(), f.Path(), &buf), nil
		}
		l.modules = append(l.modules, &bundle.ModuleFile{URL: f.URL(), Path: name, RelativePath: rel, Raw: src, Parsed: m})
	}
}

// plainSegments: the package's segments have no "/", so its path joined
// with "/" splits back into them, as bundle.RootPathsContain splits it.
func plainSegments(pkg ast.Ref) bool {
	for _, t := range pkg[1:] {
		if s, ok := t.Value.(ast.String); !ok || strings.Contains(string(s), "/") {
			return false
		}
	}
	return true
}

// restore puts the modules kept from the reader back in b, in the
// loader's order.
func (l *fastModules) restore(b *bundle.Bundle) error {
	roots := *b.Manifest.Roots
	def := b.RegoVersion(ast.RegoV1)
	out := make([]bundle.ModuleFile, 0, len(l.modules))
	read := b.Modules
	for _, mf := range l.modules {
		if mf == nil {
			if len(read) == 0 {
				return errors.New("bundle read failed: a module went missing")
			}
			out, read = append(out, read[0]), read[1:]
			continue
		}
		v, err := b.RegoVersionForFile(mf.RelativePath, def)
		if err != nil {
			return err
		}
		if v != ast.RegoV1 {
			if mf.Parsed, err = ast.ParseModuleWithOpts(mf.Path, string(mf.Raw), ast.ParserOptions{RegoVersion: v, ProcessAnnotation: true}); err != nil {
				return err
			}
		}
		segments := make([]string, 0, len(mf.Parsed.Package.Path)-1)
		for _, t := range mf.Parsed.Package.Path[1:] {
			segments = append(segments, string(t.Value.(ast.String)))
		}
		if !bundle.RootPathsContain(roots, strings.Join(segments, "/")) {
			return fmt.Errorf("manifest roots %v do not permit '%v' in module '%s'", roots, mf.Parsed.Package, mf.Path)
		}
		out = append(out, *mf)
	}
	if len(read) != 0 {
		return errors.New("bundle read failed: a module came from nowhere")
	}
	b.Modules = out
	return nil
}
