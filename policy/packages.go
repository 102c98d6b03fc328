package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"maps"
	"net/url"
	"path"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Loading package by package (issue #15): one changed policy among
// thousands must not cost a compile of them all.
//
// A closed package reads nothing but the input, its own rules and
// builtins (closedModule). A set that is a partition — every module in a
// closed policy package data.mesh.policies.<owner>.<name>, no base
// documents, roots of different bundles disjoint — compiles package by
// package exactly as it compiles whole: no rule of one package can reach
// another's, the packages' paths are disjoint from each other and from
// the library's, and the library reads them only through
// data.mesh.policies, whatever they define. So such a set is accepted and
// lowered from its packages, each compiled on its own or taken from the
// engine's cache by the content of its modules. Anything else, or any
// doubt (a package that fails to compile alone, or falls back to topdown),
// goes the whole way: one compile of the set by OPA's activation, which
// also gives the errors a refused set reports. The whole activation of a
// set loaded package by package is built on first need (a trace, an
// explanation's topdown part).

// packageKey identifies a package by its modules: their files, Rego
// versions and sources.
type packageKey [sha256.Size]byte

// setPackage is one policy package of a bundle set, with its modules.
type setPackage struct {
	path ast.Ref
	// files are the package's modules, keyed as the activation keys
	// them; modules their syntax trees, parsed again on need (trees) when
	// the bundle dropped them, and dropped again once lowered.
	files   []packageFile
	modules map[string]*ast.Module
	key     packageKey
	// closed: every module of the package is closed (closedModule);
	// found on first need (isClosed), as a cached package is closed.
	closed     bool
	closedOnce sync.Once
}

// packageFile is module i of bundle b, keyed as the activation keys it.
type packageFile struct {
	name string
	b    *Bundle
	i    int
}

// trees is the package's modules, parsed again if the bundle dropped
// them; nil if one fails to parse again.
func (sp *setPackage) trees() map[string]*ast.Module {
	if sp.modules == nil {
		sp.modules = sp.parse(fastParse)
	}
	return sp.modules
}

// loweringTrees is trees for lowerFragment, which reads the locations of
// the package, the rules, the expressions and the refs only: modules
// parsed again are parsed by fastCheck, and not kept, so the compiler's
// path, if lowering fails, parses them again in full.
func (sp *setPackage) loweringTrees() map[string]*ast.Module {
	if sp.modules != nil {
		return sp.modules
	}
	return sp.parse(fastCheck)
}

// parse is the package's modules, those the bundle dropped parsed again
// by parse; nil if one fails to, or the package has no files.
func (sp *setPackage) parse(parse func(string, []byte) (*ast.Module, bool)) map[string]*ast.Module {
	if len(sp.files) == 0 {
		return nil
	}
	modules := make(map[string]*ast.Module, len(sp.files))
	for _, f := range sp.files {
		m, err := f.b.treeBy(f.i, parse)
		if err != nil {
			return nil
		}
		modules[f.name] = m
	}
	return modules
}

// read: every module of the package was read by fastParse and its tree
// dropped.
func (sp *setPackage) read() bool {
	for _, f := range sp.files {
		if f.b.lazy == nil || f.b.lazy[f.i] == nil {
			return false
		}
	}
	return len(sp.files) > 0
}

// dropTrees forgets the trees trees parsed: the package is lowered.
func (sp *setPackage) dropTrees() {
	if len(sp.files) > 0 {
		sp.modules = nil
	}
}

// isClosed reports whether every module of the package is closed.
func (sp *setPackage) isClosed() bool {
	sp.closedOnce.Do(func() {
		trees := sp.trees()
		sp.closed = trees != nil
		for _, m := range trees {
			sp.closed = sp.closed && closedModule(m)
		}
	})
	return sp.closed
}

// packageCache keeps the lowered closed packages of the last set compiled,
// by key. Loads are serialised (Engine.loadMu), so it needs no lock; the
// lowered packages themselves are immutable and shared with generations.
type packageCache struct {
	byKey  map[packageKey]*loweredPackage
	fields *fieldTable
	// libraryNondeterministic: the library calls a nondeterministic builtin.
	libraryNondeterministic bool
}

func newPackageCache(library map[string]*ast.Module) *packageCache {
	return &packageCache{byKey: map[packageKey]*loweredPackage{}, fields: newFieldTable(),
		libraryNondeterministic: usesNondeterministic(library)}
}

// keep remembers the closed packages of a set just compiled whole,
// forgetting those of earlier sets.
func (c *packageCache) keep(pkgs []*setPackage, lowered map[string]*loweredPackage) {
	byKey := make(map[packageKey]*loweredPackage, len(pkgs))
	for _, sp := range pkgs {
		lp := lowered[sp.path.String()]
		if lp == nil || !sp.isClosed() {
			continue
		}
		lp.nondeterministic = usesNondeterministic(sp.trees())
		byKey[sp.key] = lp
	}
	c.byKey = byKey
}

// compileByPackage builds the generation of a partition from its packages,
// compiling those the cache lacks. It returns nil, and leaves the cache
// alone, when the whole compile should decide instead: a package is not
// closed, fails to compile or lower, or needs topdown; or bundle names
// collide with each other or with the library's modules. (Bundles from
// ReadBundle leave the library's document alone.)
func (e *Engine) compileByPackage(bundles []*Bundle, pkgs []*setPackage) *generation {
	c := e.packages
	if !namesUnique(bundles) {
		return nil
	}
	lowered := make([]*loweredPackage, len(pkgs))
	var missing []int
	for i, sp := range pkgs {
		for _, f := range sp.files {
			if _, ok := e.library[f.name]; ok {
				return nil
			}
		}
		if lowered[i] = c.byKey[sp.key]; lowered[i] == nil {
			// A package read by fastParse is parsed again by the worker
			// that lowers it, which sees if it is closed; parsing it here
			// would hold every tree at once.
			if !sp.read() && !sp.isClosed() {
				return nil
			}
			missing = append(missing, i)
		}
	}
	if !c.compileMissing(pkgs, missing, lowered) {
		return nil
	}
	g := e.newGeneration(bundles)
	g.prog, g.compiled, g.sources = assemble(lowered), len(missing), keepSources(bundles)
	nondeterministic := c.libraryNondeterministic
	byKey := make(map[packageKey]*loweredPackage, len(pkgs))
	for i, lp := range lowered {
		nondeterministic = nondeterministic || lp.nondeterministic
		byKey[pkgs[i].key] = lp
	}
	spec, cacheable := programCacheKey(g.prog, nondeterministic)
	e.setCache(g, spec, cacheable)
	c.byKey = byKey
	return g
}

// packageBatch is how many packages one compiler takes: enough to spread
// a compiler's fixed cost (its builtins and their types), few enough that
// batches keep every processor busy and a changed package compiles with
// few others (alone, when it is the only one).
const packageBatch = 256

// compileMissing compiles and lowers pkgs[i] for every i of missing into
// lowered, in batches on every processor; false if any batch fails.
func (c *packageCache) compileMissing(pkgs []*setPackage, missing []int, lowered []*loweredPackage) bool {
	var batches [][]int
	for len(missing) > 0 {
		n := min(packageBatch, len(missing))
		batches, missing = append(batches, missing[:n]), missing[n:]
	}
	next := make(chan []int)
	var failed atomic.Bool
	var panicked atomic.Pointer[compilePanic]
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(batches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range next {
				if failed.Load() {
					continue
				}
				ok, p := c.compileBatchRecovering(pkgs, batch, lowered)
				if p != nil {
					panicked.CompareAndSwap(nil, p)
				}
				if !ok {
					failed.Store(true)
				}
			}
		}()
	}
	for _, b := range batches {
		next <- b
	}
	close(next)
	wg.Wait()
	if p := panicked.Load(); p != nil {
		panic(p) // in the loading goroutine, where Engine.Load recovers it
	}
	return !failed.Load()
}

// compilePanic is a panic in a compile worker, with the worker's stack.
type compilePanic struct {
	value any
	stack []byte
}

// compileBatchRecovering lowers and compiles one batch in a worker, a
// panic returned rather than ending the process from a goroutine no
// recover reaches.
func (c *packageCache) compileBatchRecovering(pkgs []*setPackage, batch []int, lowered []*loweredPackage) (ok bool, p *compilePanic) {
	defer func() {
		if r := recover(); r != nil {
			ok, p = false, &compilePanic{value: r, stack: debug.Stack()}
		}
	}()
	return c.compileBatch(pkgs, c.lowerFragments(pkgs, batch, lowered), lowered), nil
}

// testHookLower, when a test sets it, is called before each package is
// lowered in a compile worker.
var testHookLower atomic.Pointer[func(path ast.Ref)]

// lowerFragments lowers the packages pkgs[i], i in batch, that are in the
// translator's fragment (fragment.go) into lowered[i], without a compiler,
// and returns the others. A fragment package that fails to lower is
// returned too: the compiler's path then fails it, or lowers it, as
// before.
func (c *packageCache) lowerFragments(pkgs []*setPackage, batch []int, lowered []*loweredPackage) []int {
	var rest []int
	for _, i := range batch {
		if hook := testHookLower.Load(); hook != nil {
			(*hook)(pkgs[i].path)
		}
		if lowered[i] = c.lowerFragment(pkgs[i]); lowered[i] == nil {
			rest = append(rest, i)
			continue
		}
		pkgs[i].dropTrees()
	}
	return rest
}

// lowerFragment lowers sp through fragmentCompile; nil if it is not in
// the fragment or does not lower.
func (c *packageCache) lowerFragment(sp *setPackage) *loweredPackage {
	trees := sp.loweringTrees()
	if trees == nil {
		return nil
	}
	rules, ok := fragmentCompile(sp.path, trees)
	if !ok {
		return nil
	}
	for _, r := range rules {
		if checkRulePlace(sp.path, r) != nil {
			return nil
		}
	}
	l := newLowerer(fragmentRules{pkg: sp.path, rules: rules}, map[string]any{}, c.fields)
	lp, err := lowerWhole(l, &contributingPackage{path: sp.path, rules: rules})
	if err != nil {
		return nil
	}
	lp.nondeterministic = usesNondeterministic(trees)
	return lp
}

// compileBatch compiles the closed packages pkgs[i], i in batch, with one
// compiler (they cannot reach each other), and lowers each into lowered[i];
// false if they fail to compile, or one fails to lower or needs topdown.
func (c *packageCache) compileBatch(pkgs []*setPackage, batch []int, lowered []*loweredPackage) bool {
	if len(batch) == 0 {
		return true
	}
	modules := map[string]*ast.Module{}
	for _, i := range batch {
		trees := pkgs[i].trees()
		if trees == nil || !pkgs[i].isClosed() {
			return false
		}
		maps.Copy(modules, trees)
	}
	comp := ast.NewCompiler()
	if comp.Compile(modules); comp.Failed() || checkPlacement(comp) != nil {
		return false
	}
	compiled := map[string]*contributingPackage{}
	for _, pkg := range packagesOf(comp) {
		compiled[pkg.path.String()] = pkg
	}
	l := newLowerer(comp, map[string]any{}, c.fields)
	for _, i := range batch {
		lp := &loweredPackage{path: pkgs[i].path}
		if pkg := compiled[pkgs[i].path.String()]; pkg != nil {
			var err error
			if lp, err = lowerWhole(l, pkg); err != nil {
				return false
			}
		}
		lp.nondeterministic = usesNondeterministic(pkgs[i].modules)
		lowered[i] = lp
	}
	for _, i := range batch {
		pkgs[i].dropTrees()
	}
	return true
}

// namesUnique reports whether the bundles have distinct names.
func namesUnique(bundles []*Bundle) bool {
	seen := make(map[string]bool, len(bundles))
	for _, b := range bundles {
		if seen[b.Name] {
			return false
		}
		seen[b.Name] = true
	}
	return true
}

// setPackages groups the policy-package modules of bundles by package, in
// the order of their paths, and reports whether the set may be a
// partition (see above): all but the packages' being closed, which
// isClosed tells.
func setPackages(bundles []*Bundle) ([]*setPackage, bool) {
	partition := rootsDisjoint(bundles)
	// building is a package being gathered: its owner (the bundle of its
	// first module) and the hash of its modules so far.
	type building struct {
		sp    *setPackage
		owner string
		h     hash.Hash
	}
	byPath := map[string]*building{}
	for _, b := range bundles {
		if b == nil || b.raw == nil {
			return nil, false
		}
		if len(b.raw.Data) > 0 || len(b.raw.WasmModules) > 0 || len(b.raw.PlanModules) > 0 {
			partition = false
		}
		prefix := modulePrefix(b.Name)
		for i, mf := range b.raw.Modules {
			if !b.inPolicyPackage(i) {
				partition = false
				continue
			}
			k := b.packageString(i)
			p := byPath[k]
			if p == nil {
				p = &building{sp: &setPackage{path: b.packagePath(i)}, owner: b.Name, h: sha256.New()}
				byPath[k] = p
			}
			if p.owner != b.Name {
				partition = false
			}
			p.sp.files = append(p.sp.files, packageFile{name: path.Join(prefix, mf.Path), b: b, i: i})
			// The file's name is path.Join(prefix, mf.Path), so the two
			// parts stand for it.
			digest := b.digest(i)
			hashParts(p.h, prefix, mf.Path, b.regoVersion(i).String(), string(digest[:]))
		}
	}
	out := make([]*setPackage, 0, len(byPath))
	for _, k := range slices.Sorted(maps.Keys(byPath)) {
		p := byPath[k]
		p.h.Sum(p.sp.key[:0])
		out = append(out, p.sp)
	}
	return out, partition
}

// hashParts writes each part to h after its length, so parts cannot run
// into each other. The modules of one package are hashed in the order
// the bundles list them, which their readers keep stable.
func hashParts(h hash.Hash, parts ...string) {
	var n [8]byte
	for _, p := range parts {
		binary.LittleEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		io.WriteString(h, p)
	}
}

// modulePrefix is what bundle.Activate puts before the files of bundle
// name to key its modules (OPA's modulePathWithPrefix).
func modulePrefix(name string) string {
	if u, err := url.Parse(name); err == nil {
		return path.Join(u.Host, u.Path)
	}
	return name
}

// isPolicyPackage: path is data.mesh.policies.<owner>.<name>, both strings.
func isPolicyPackage(p ast.Ref) bool {
	if len(p) != len(policiesRef)+2 || !p.HasPrefix(policiesRef) {
		return false
	}
	return isString(p[len(p)-2].Value) && isString(p[len(p)-1].Value)
}

// closedModule reports whether m reads nothing but the input, rules of its
// own package and builtins: it imports no data, names data only as refs
// inside its package, and never as a whole.
func closedModule(m *ast.Module) bool {
	for _, imp := range m.Imports {
		if ref, ok := imp.Path.Value.(ast.Ref); !ok || ref.HasPrefix(ast.DefaultRootRef) {
			return false
		}
	}
	closed := true
	var visit func(t *ast.Term) bool
	visit = func(t *ast.Term) bool {
		switch v := t.Value.(type) {
		case ast.Var:
			closed = closed && !v.Equal(ast.DefaultRootDocument.Value)
		case ast.Ref:
			closed = closed && (!v.HasPrefix(ast.DefaultRootRef) || v.HasPrefix(m.Package.Path))
			for _, part := range v[1:] {
				ast.WalkTerms(part, visit)
			}
			return true // its head is walked above
		}
		return !closed
	}
	for _, r := range m.Rules {
		ast.WalkTerms(r, visit)
	}
	return closed
}

// rootsDisjoint reports whether no root of a bundle contains or lies in a
// root of another.
func rootsDisjoint(bundles []*Bundle) bool {
	for i, a := range bundles {
		for _, b := range bundles[i+1:] {
			for _, ra := range rootsOf(a) {
				for _, rb := range rootsOf(b) {
					if segmentsHavePrefix(ra, rb) || segmentsHavePrefix(rb, ra) {
						return false
					}
				}
			}
		}
	}
	return true
}

// rootsOf is a bundle's roots as path segments; [""] (everything) is an
// empty path.
func rootsOf(b *Bundle) [][]string {
	if b == nil || len(b.Roots) == 0 {
		return [][]string{nil}
	}
	out := make([][]string, 0, len(b.Roots))
	for _, r := range b.Roots {
		var segs []string
		if r = strings.Trim(r, "/"); r != "" {
			segs = strings.Split(r, "/")
		}
		out = append(out, segs)
	}
	return out
}

// moduleSources is a bundle without its modules' syntax trees, which a
// generation loaded package by package holds instead of the bundle: the
// trees are the bulk of a read bundle, and only an activation needs them.
type moduleSources struct {
	b        *Bundle // its raw.Modules have no Parsed
	versions []ast.RegoVersion
}

func keepSources(bundles []*Bundle) []moduleSources {
	out := make([]moduleSources, len(bundles))
	for i, b := range bundles {
		raw := *b.raw
		raw.Modules = slices.Clone(raw.Modules)
		versions := make([]ast.RegoVersion, len(raw.Modules))
		for j := range raw.Modules {
			versions[j] = b.regoVersion(j)
			raw.Modules[j].Parsed = nil
		}
		kept := *b
		kept.raw = &raw
		out[i] = moduleSources{b: &kept, versions: versions}
	}
	return out
}

// parse is the bundle again, its modules parsed as ReadBundle parsed them.
func (s moduleSources) parse() (*Bundle, error) {
	raw := *s.b.raw
	raw.Modules = slices.Clone(raw.Modules)
	for i := range raw.Modules {
		mf := &raw.Modules[i]
		m, err := ast.ParseModuleWithOpts(mf.Path, string(mf.Raw), ast.ParserOptions{RegoVersion: s.versions[i], ProcessAnnotation: true})
		if err != nil {
			return nil, fmt.Errorf("policy: parse %s again: %w", mf.Path, err)
		}
		mf.Parsed = m
	}
	b := *s.b
	b.raw = &raw
	return &b, nil
}
