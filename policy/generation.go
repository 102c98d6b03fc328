package policy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
)

// generation is one compiled bundle set: immutable once built, except for
// its cache, which is replaced wholesale, and for what it builds on first
// need (the activation of a set loaded package by package, the reference).
type generation struct {
	id uint64
	// replaced is closed when a newer generation takes over.
	replaced  chan struct{}
	revisions map[string]string
	// sources and library are the set, for building act on first need.
	sources []moduleSources
	library map[string]*ast.Module
	// act is the activated set (compiler, store), for explanations and the
	// reference: built at load by a whole compile, or on first need when
	// the set was loaded package by package (packages.go); read it with
	// activation.
	act     *activation
	actOnce sync.Once
	actErr  error
	// ref is the reference (topdown), prepared on first need: at load when
	// every decision uses it (prog nil), else for a trace; read it with
	// reference.
	ref     *reference
	refOnce sync.Once
	refErr  error
	// mask is the set's data.system.log.mask, nil when it defines none.
	mask *logMask
	prog *program // nil: every decision goes through topdown
	// compiled counts the packages compiled on their own at load, when the
	// set was loaded package by package; -1 when it was compiled whole.
	compiled int
	// cacheSpec says which input fields an L4 decision depends on;
	// cacheable is false when decisions cannot be cached (nondeterministic
	// builtins such as time.now_ns).
	cacheSpec cacheSpec
	cacheable bool
	cache     atomic.Pointer[decisionCache]
}

// compile builds a generation for bundles: package by package when the
// set is a partition (packages.go), else with one compile of the whole set.
func (e *Engine) compile(ctx context.Context, bundles []*Bundle) (*generation, error) {
	pkgs, partition := setPackages(bundles)
	if partition && !e.cfg.Topdown && !e.wholeOnly {
		if g := e.compileByPackage(bundles, pkgs); g != nil {
			return g, nil
		}
	}
	g, lowered, err := e.compileWhole(ctx, bundles)
	if err == nil {
		e.packages.keep(pkgs, lowered)
	}
	return g, err
}

// compileWhole activates the set with one compile of every module, and
// lowers it; it returns the packages it lowered, by path.
func (e *Engine) compileWhole(ctx context.Context, bundles []*Bundle) (*generation, map[string]*loweredPackage, error) {
	act, err := activate(ctx, bundles, e.library)
	if err != nil {
		if !errorsIsBundle(err) {
			err = fmt.Errorf("%w: %w", ErrBundle, err)
		}
		return nil, nil, err
	}
	if err := checkPlacement(act.compiler); err != nil {
		return nil, nil, err
	}
	g := e.newGeneration(bundles)
	g.act, g.mask, g.compiled = act, act.mask, -1
	g.actOnce.Do(func() {}) // act is built
	var lowered map[string]*loweredPackage
	if !e.cfg.Topdown {
		g.prog, lowered, err = compileProgramWith(ctx, act, e.packages.fields)
		switch {
		case errors.Is(err, errNoProgram):
			e.log.Info("native policy program off for this bundle set; decisions use topdown", "reason", err)
		case err != nil:
			return nil, nil, fmt.Errorf("%w: %w", ErrBundle, err)
		}
		if g.prog != nil {
			for _, note := range g.prog.notes {
				e.log.Info("package evaluated by topdown", "detail", note)
			}
		}
	}
	if g.prog == nil {
		// Every decision uses the reference: it must prepare, or the set is refused.
		if _, err := g.reference(ctx); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBundle, err)
		}
	}
	spec, cacheable := cacheKey(act.compiler, g.prog)
	e.setCache(g, spec, cacheable)
	return g, lowered, nil
}

func (e *Engine) newGeneration(bundles []*Bundle) *generation {
	return &generation{id: e.nextID.Add(1), revisions: revisionsByName(bundles), library: e.library, replaced: make(chan struct{})}
}

func (e *Engine) setCache(g *generation, spec cacheSpec, cacheable bool) {
	g.cacheSpec, g.cacheable = spec, cacheable
	if e.cfg.CacheSize > 0 {
		g.resetCache(e.cfg.CacheSize)
	}
}

// activation is the activated set, activated now if the set was loaded
// package by package. It fails only if OPA refuses a set the engine
// accepted package by package, which packages.go rules out.
func (g *generation) activation(ctx context.Context) (*activation, error) {
	g.actOnce.Do(func() {
		bundles := make([]*Bundle, len(g.sources))
		for i, s := range g.sources {
			if bundles[i], g.actErr = s.parse(); g.actErr != nil {
				return
			}
		}
		g.act, g.actErr = activate(context.WithoutCancel(ctx), bundles, g.library)
	})
	return g.act, g.actErr
}

// reference is the set's topdown query, prepared on first need.
func (g *generation) reference(ctx context.Context) (*reference, error) {
	g.refOnce.Do(func() {
		act, err := g.activation(ctx)
		if err != nil {
			g.refErr = err
			return
		}
		g.ref, g.refErr = prepareReference(context.WithoutCancel(ctx), act)
	})
	return g.ref, g.refErr
}

// cacheKey chooses the L4 cache key: the fields the native rules read
// when every package is native, else the whole L4 input; not cacheable
// when a nondeterministic builtin (time, randomness, HTTP) is used anywhere.
func cacheKey(c *ast.Compiler, prog *program) (cacheSpec, bool) {
	return programCacheKey(prog, usesNondeterministic(c.Modules))
}

func programCacheKey(prog *program, nondeterministic bool) (cacheSpec, bool) {
	if nondeterministic {
		return cacheSpec{}, false
	}
	if prog == nil || prog.fallback != nil {
		return everything, true
	}
	paths := make([]string, len(prog.fields))
	for i, f := range prog.fields {
		paths[i] = f.path
	}
	return specFor(paths), true
}

// usesNondeterministic reports whether a module calls a nondeterministic
// builtin; compiled or only parsed modules alike.
func usesNondeterministic(modules map[string]*ast.Module) bool {
	found := false
	for _, m := range modules {
		ast.WalkExprs(m, func(e *ast.Expr) bool {
			if e.IsCall() {
				if b, ok := ast.BuiltinMap[e.Operator().String()]; ok && b.Nondeterministic {
					found = true
				}
			}
			return found
		})
	}
	return found
}

func (g *generation) resetCache(size int) {
	if g.cacheable {
		g.cache.Store(newDecisionCache(g.cacheSpec, size))
	}
}

// scratch carries one decision's input and cache probe; pooled, so the
// hot path allocates nothing (the native program reads the input through
// function values, which would otherwise move it to the heap).
type scratch struct {
	in     Input
	req    Request        // the copy of in.Request that Prepare may write
	cache  *decisionCache // nil: this input is not cached
	key    l4Key
	hash   uint64
	cached Decision // what the probe found
	found  bool
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func (s *scratch) release() {
	*s = scratch{}
	scratchPool.Put(s)
}

// probe looks raw (the input as the caller gave it, before Prepare) up in
// the L4 cache, leaving the key and the answer in s.
func (g *generation) probe(s *scratch, raw *Input) {
	s.cache = g.cache.Load()
	if s.cache == nil || raw.Layer != L4 || raw.Request != nil {
		s.cache = nil
		return
	}
	s.cache.fillKey(&s.key, raw)
	s.cached, s.hash, s.found = s.cache.get(&s.key)
}

// hit is the cached decision the probe found, if any.
func (s *scratch) hit() (Decision, bool) { return s.cached, s.found }

// store caches a decision taken after a lookup missed.
func (s *scratch) store(d Decision) {
	if s.cache != nil {
		s.cache.put(s.hash, &s.key, d)
	}
}

// decide answers an input already probed (the shadow set's path) from
// the cache, the native program, or topdown.
func (g *generation) decide(ctx context.Context, s *scratch) (Decision, bool, error) {
	if d, hit := s.hit(); hit {
		return d, true, nil
	}
	d, err := g.evaluate(ctx, &s.in)
	if err == nil {
		s.store(d)
	}
	return d, false, err
}

func (g *generation) evaluate(ctx context.Context, in *Input) (Decision, error) {
	if g.prog != nil {
		return g.prog.decide(ctx, in)
	}
	ref, err := g.reference(ctx)
	if err != nil {
		return deny("evaluation failed: " + err.Error()), fmt.Errorf("policy: evaluate: %w", err)
	}
	return ref.decide(ctx, in)
}
