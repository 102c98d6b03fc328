package policy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"
)

// fastModules reads a bundle's modules with fastParse where it can,
// without changing what OPA's bundle reader does with the rest: it keeps
// each module fastParse reads from the reader, and restore puts it back
// in its place, after doing what the reader does with a module: give it
// the Rego version the manifest says (parsing it with OPA's parser unless
// that is v1) and check that the manifest's roots permit its package, as
// the reader does, with the reader's message.
//
// The reader verifies a signed bundle's files as it reads them, so it
// cannot verify the modules it never sees. With verification configured,
// fastModules verifies instead, every file, before anything is parsed,
// and the reader is told to skip it: verifySignatures does what the
// reader does (bundle.Reader.Read and checkSignaturesAndDescriptors),
// through OPA's own functions for the signature and each file's digest
// (bundle.VerifyBundleSignature, bundle.VerifyBundleFile), on the bytes
// the loader gave.
type fastModules struct {
	bundle.DirectoryLoader
	baseDir string
	// limit is the reader's: a file this long or longer is refused.
	limit int64
	// modules are the bundle's modules in the loader's order: those kept
	// from the reader with their file and syntax tree, the others nil;
	// lazy, beside them, what is kept of a module instead of its tree
	// (which is then dropped at once).
	modules []*bundle.ModuleFile
	lazy    []*lazyModule
	// misspelt memoizes misspeltPoint by rule name.
	misspelt map[string]bool

	// verify, when not nil, is the verification verifySignatures does;
	// signed are the bundle's files (but the signatures file) as the
	// loader gave them, until handed out; signatures the signatures
	// file's content, from sigPath; sigErr is the first error reading
	// it; drained is set once drain ran, verifyErr is verifySignatures's
	// answer.
	verify     *bundle.VerificationConfig
	signed     []signedFile
	signatures bundle.SignaturesConfig
	sigPath    string
	sigErr     error
	drained    bool
	verifyErr  error
}

// signedFile is a file of a bundle being verified, as the loader gave it,
// and its path as the signature names it.
type signedFile struct {
	url, path, signed string
	data              []byte
}

// newFastModules wraps l; verify is the verification configured, or nil
// to leave it to the reader.
func newFastModules(l bundle.DirectoryLoader, baseDir string, verify *bundle.VerificationConfig) *fastModules {
	return &fastModules{DirectoryLoader: l, baseDir: baseDir, limit: bundle.DefaultSizeLimitBytes + 1, verify: verify}
}

// NextFile is the wrapped loader's next file but the modules fastParse
// reads. When it verifies, it first reads every file and verifies them
// all (nextVerified): nothing of a bundle is parsed before its signature
// and digests are checked, as the reader checks a file before it parses
// it.
func (l *fastModules) NextFile() (*bundle.Descriptor, error) {
	if l.verify != nil {
		return l.nextVerified()
	}
	return l.next(l.DirectoryLoader.NextFile)
}

// next is source's next file but the modules fastParse reads.
func (l *fastModules) next(source func() (*bundle.Descriptor, error)) (*bundle.Descriptor, error) {
	for {
		f, err := source()
		if err != nil {
			return f, err
		}
		if !strings.HasSuffix(f.Path(), bundle.RegoExt) {
			return f, nil
		}
		buf, err := l.read(f)
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
		digest := moduleDigest(sha256.Sum256(src))
		if lazy := readModules.get(digest); lazy != nil && int64(len(src)) < l.limit {
			// Read before, in this bundle or an earlier one: what fastParse
			// made of these bytes does not depend on the file's name.
			mf := &bundle.ModuleFile{URL: f.URL(), Path: name, RelativePath: rel, Raw: src}
			l.modules, l.lazy = append(l.modules, mf), append(l.lazy, lazy)
			continue
		}
		m, ok := fastCheck(name, src)
		dropped := ok && l.unremarkable(m)
		if ok && !dropped {
			m, ok = fastParse(name, src) // the tree is kept: every term with its location
		}
		if !ok || int64(len(src)) >= l.limit || !plainSegments(m.Package.Path) {
			l.modules, l.lazy = append(l.modules, nil), append(l.lazy, nil)
			return bundle.NewDescriptor(f.URL(), f.Path(), buf), nil
		}
		mf := &bundle.ModuleFile{URL: f.URL(), Path: name, RelativePath: rel, Raw: src, Parsed: m}
		var lazy *lazyModule
		if dropped {
			pkg := unlocated(ast.NewTerm(m.Package.Path)).Value.(ast.Ref)
			lazy, mf.Parsed = &lazyModule{pkg: pkg, key: pkg.String(), digest: digest}, nil
			readModules.put(digest, lazy)
		}
		l.modules, l.lazy = append(l.modules, mf), append(l.lazy, lazy)
	}
}

// read reads f whole (up to the reader's limit, which the reader then
// enforces) and closes it.
func (l *fastModules) read(f *bundle.Descriptor) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	_, err := f.Read(&buf, l.limit)
	if cerr := f.Close(); err == nil || err == io.EOF {
		err = cerr
	}
	return &buf, err
}

// nextVerified is NextFile when it verifies: at the first call every file
// is read and verified (drain); a bundle that fails is refused at once,
// one that passes handed out file by file as next does, the signatures
// file left out.
func (l *fastModules) nextVerified() (*bundle.Descriptor, error) {
	if !l.drained {
		l.drained = true
		if err := l.drain(); err != nil {
			return nil, err
		}
		l.verifyErr = l.verifySignatures()
	}
	if l.verifyErr != nil {
		return nil, l.verifyErr
	}
	return l.next(func() (*bundle.Descriptor, error) {
		if len(l.signed) == 0 {
			return nil, io.EOF
		}
		f := l.signed[0]
		l.signed[0], l.signed = signedFile{}, l.signed[1:]
		return bundle.NewDescriptor(f.url, f.path, bytes.NewBuffer(f.data)), nil
	})
}

// drain reads every file of the wrapped loader: the signatures file
// decoded (readSignatures), the others kept in the loader's order.
func (l *fastModules) drain() error {
	for {
		f, err := l.DirectoryLoader.NextFile()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		buf, err := l.read(f)
		if err != nil {
			return err
		}
		if bundle.IsSignaturesFile(f.Path()) {
			l.readSignatures(f.Path(), buf.Bytes())
			continue
		}
		l.signed = append(l.signed, signedFile{url: f.URL(), path: f.Path(), signed: l.signedPath(f), data: buf.Bytes()})
	}
}

// signedPath is the path a signature names f by, as the reader makes it.
func (l *fastModules) signedPath(f *bundle.Descriptor) string {
	p := f.Path()
	if l.baseDir != "" {
		p = f.URL()
	}
	return strings.TrimPrefix(p, "/")
}

// readSignatures decodes the signatures file, as the reader does
// (preProcessBundle), with its messages.
func (l *fastModules) readSignatures(path string, data []byte) {
	if l.sigErr != nil {
		return
	}
	if l.sigPath != "" {
		l.sigErr = fmt.Errorf("bundle contains multiple signatures files: %q and %q", l.sigPath, path)
		return
	}
	l.sigPath = path
	if err := util.NewJSONDecoder(bytes.NewReader(data)).Decode(&l.signatures); err != nil {
		l.sigErr = fmt.Errorf("bundle load failed on signatures decode: %w", err)
	}
}

// verifySignatures verifies the files drain read as the reader would
// have: a snapshot's signature and every file's digest against it (but
// the files the configuration excludes), and no file the signature names
// missing; a delta bundle only where the configuration allows it
// unsigned. The errors are the reader's.
func (l *fastModules) verifySignatures() error {
	if l.sigErr != nil {
		return l.sigErr
	}
	if l.delta() {
		if !l.verify.UnsignedDeltaBundlesAllowed() {
			return errors.New("delta bundles do not support signature verification")
		}
		return nil
	}
	if l.signatures.Signatures == nil && l.signatures.Plugin == "" {
		if l.verify.SignatureRequired() {
			return errors.New("bundle missing .signatures.json file")
		}
		return nil
	}
	files, err := bundle.VerifyBundleSignature(l.signatures, l.verify)
	if err != nil {
		return err
	}
	for _, f := range l.signed {
		if excludedFromVerification(l.verify.Exclude, f.signed) {
			delete(files, f.signed)
			continue
		}
		if err := bundle.VerifyBundleFile(f.signed, *bytes.NewBuffer(f.data), files); err != nil {
			return err
		}
	}
	if len(files) != 0 {
		return fmt.Errorf("file(s) %v specified in bundle signatures but not found in the target bundle", util.Keys(files))
	}
	return nil
}

// delta says whether the bundle is a delta bundle, as the reader tells
// (bundle.Bundle.Type): a patch.json with operations.
func (l *fastModules) delta() bool {
	for _, f := range l.signed {
		if filepath.Base(f.path) == "patch.json" {
			var p bundle.Patch
			if util.NewJSONDecoder(bytes.NewReader(f.data)).Decode(&p) == nil && len(p.Data) != 0 {
				return true
			}
		}
	}
	return false
}

// excludedFromVerification matches path as the reader's isFileExcluded.
func excludedFromVerification(patterns []string, path string) bool {
	for _, p := range patterns {
		if match, _ := filepath.Match(p, path); match {
			return true
		}
	}
	return false
}

// unremarkable: the module is a policy package in which ReadBundle's
// checks find nothing to refuse or warn about (a rule of the fragment
// defines a document of its own package, so never of the library's; no
// rule name is a misspelt contribution point), so its tree need not be
// kept for them.
func (l *fastModules) unremarkable(m *ast.Module) bool {
	if !isPolicyPackage(m.Package.Path) {
		return false
	}
	if l.misspelt == nil {
		l.misspelt = map[string]bool{}
	}
	for _, r := range m.Rules {
		name := ruleName(r)
		bad, ok := l.misspelt[name]
		if !ok {
			_, bad = misspeltPoint(name)
			l.misspelt[name] = bad
		}
		if bad || len(r.Head.Ref()) != 1 {
			return false
		}
	}
	return true
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
func (l *fastModules) restore(b *bundle.Bundle) ([]*lazyModule, error) {
	roots := *b.Manifest.Roots
	def := b.RegoVersion(ast.RegoV1)
	out := make([]bundle.ModuleFile, 0, len(l.modules))
	lazy := make([]*lazyModule, 0, len(l.modules))
	read := b.Modules
	for j, mf := range l.modules {
		if mf == nil {
			if len(read) == 0 {
				return nil, errors.New("bundle read failed: a module went missing")
			}
			out, read, lazy = append(out, read[0]), read[1:], append(lazy, nil)
			continue
		}
		v, err := b.RegoVersionForFile(mf.RelativePath, def)
		if err != nil {
			return nil, err
		}
		lm := l.lazy[j]
		if v != ast.RegoV1 {
			if mf.Parsed, err = ast.ParseModuleWithOpts(mf.Path, string(mf.Raw), ast.ParserOptions{RegoVersion: v, ProcessAnnotation: true}); err != nil {
				return nil, err
			}
			lm = nil
		}
		pkg := &ast.Package{}
		if lm != nil {
			pkg.Path = lm.pkg
		} else {
			pkg.Path = mf.Parsed.Package.Path
		}
		segments := make([]string, 0, len(pkg.Path)-1)
		for _, t := range pkg.Path[1:] {
			segments = append(segments, string(t.Value.(ast.String)))
		}
		if !bundle.RootPathsContain(roots, strings.Join(segments, "/")) {
			return nil, fmt.Errorf("manifest roots %v do not permit '%v' in module '%s'", roots, pkg, mf.Path)
		}
		out, lazy = append(out, *mf), append(lazy, lm)
	}
	if len(read) != 0 {
		return nil, errors.New("bundle read failed: a module came from nowhere")
	}
	b.Modules = out
	if !slices.ContainsFunc(lazy, func(lm *lazyModule) bool { return lm != nil }) {
		lazy = nil
	}
	return lazy, nil
}

// lazyModule is what a Bundle keeps of a module fastParse read instead
// of its syntax tree, which is most of a translated module's memory and
// the bulk of a read bundle's: the tree is dropped as soon as it is read.
// A load parses the module again, with fastParse, only if its package is
// not in the engine's cache.
type lazyModule struct {
	pkg ast.Ref // without locations
	key string  // pkg.String(), which every load asks for
	// digest is the SHA-256 of the module's source, which a load hashes
	// into its package's key instead of the source.
	digest moduleDigest
}

// moduleDigest is the SHA-256 of a module's source.
type moduleDigest [sha256.Size]byte

// readModules remembers what fastParse kept of the modules read lately,
// by the digest of their source: a bundle read again, as a proxy reads
// its bundles at every change, parses only the modules that changed. The
// lazy modules are immutable, and shared by every bundle that holds
// them. The bound (16,384 modules kept at least, 32,768 at most, some
// 510 bytes each: 17 MB at most) covers a bundle of 10,000 policies and
// its changes; a larger one is parsed again in part.
var readModules = newModuleMemo(1 << 14)

// DropReadCache forgets what ReadBundle remembers of the modules it read:
// the next read parses every module, as a new process does. For
// benchmarks of a first read.
func DropReadCache() {
	readModules.mu.Lock()
	defer readModules.mu.Unlock()
	readModules.cur, readModules.prev = map[moduleDigest]*lazyModule{}, nil
}

// moduleMemo is a bounded map from a module's digest to its lazyModule.
// It keeps two generations: entries go into the current one, and when
// that holds limit entries it becomes the previous one, and the previous
// one is dropped; an entry found in the previous one moves to the
// current one. So it keeps at least the last limit modules read, and at
// most twice as many.
type moduleMemo struct {
	mu        sync.Mutex
	limit     int
	cur, prev map[moduleDigest]*lazyModule
}

func newModuleMemo(limit int) *moduleMemo {
	return &moduleMemo{limit: limit, cur: map[moduleDigest]*lazyModule{}}
}

func (m *moduleMemo) get(d moduleDigest) *lazyModule {
	m.mu.Lock()
	defer m.mu.Unlock()
	lm := m.cur[d]
	if lm == nil {
		if lm = m.prev[d]; lm != nil {
			m.putLocked(d, lm)
		}
	}
	return lm
}

func (m *moduleMemo) put(d moduleDigest, lm *lazyModule) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.putLocked(d, lm)
}

func (m *moduleMemo) putLocked(d moduleDigest, lm *lazyModule) {
	if len(m.cur) >= m.limit {
		m.prev, m.cur = m.cur, make(map[moduleDigest]*lazyModule, m.limit)
	}
	m.cur[d] = lm
}

// packagePath is module i's package path.
func (b *Bundle) packagePath(i int) ast.Ref {
	if b.lazy != nil && b.lazy[i] != nil {
		return b.lazy[i].pkg
	}
	return b.raw.Modules[i].Parsed.Package.Path
}

// inPolicyPackage: module i is in a policy package (isPolicyPackage),
// as every module fastParse read and dropped is.
func (b *Bundle) inPolicyPackage(i int) bool {
	return (b.lazy != nil && b.lazy[i] != nil) || isPolicyPackage(b.raw.Modules[i].Parsed.Package.Path)
}

// digest is the SHA-256 of module i's source.
func (b *Bundle) digest(i int) moduleDigest {
	if b.lazy != nil && b.lazy[i] != nil {
		return b.lazy[i].digest
	}
	return sha256.Sum256(b.raw.Modules[i].Raw)
}

// packageString is module i's package path as a string.
func (b *Bundle) packageString(i int) string {
	if b.lazy != nil && b.lazy[i] != nil {
		return b.lazy[i].key
	}
	return b.raw.Modules[i].Parsed.Package.Path.String()
}

// regoVersion is module i's Rego version.
func (b *Bundle) regoVersion(i int) ast.RegoVersion {
	if b.lazy != nil && b.lazy[i] != nil {
		return ast.RegoV1
	}
	return b.raw.Modules[i].Parsed.RegoVersion()
}

// tree is module i's syntax tree, parsed again if the bundle dropped it.
func (b *Bundle) tree(i int) (*ast.Module, error) { return b.treeBy(i, fastParse) }

// treeBy is tree, the module parsed again by parse (fastParse, or
// fastCheck for a tree only lowered).
func (b *Bundle) treeBy(i int, parse func(string, []byte) (*ast.Module, bool)) (*ast.Module, error) {
	mf := &b.raw.Modules[i]
	if mf.Parsed != nil {
		return mf.Parsed, nil
	}
	m, ok := parse(mf.Path, mf.Raw)
	if !ok {
		return nil, fmt.Errorf("policy: %s: read once, fails to read again", mf.Path)
	}
	return m, nil
}

// parsedRaw is the bundle as OPA's reader read it, every module with its
// syntax tree: what OPA's activation takes.
func (b *Bundle) parsedRaw() (*bundle.Bundle, error) {
	if b.lazy == nil {
		return b.raw, nil
	}
	raw := *b.raw
	raw.Modules = slices.Clone(raw.Modules)
	for i := range raw.Modules {
		m, err := b.tree(i)
		if err != nil {
			return nil, err
		}
		raw.Modules[i].Parsed = m
	}
	return &raw, nil
}
