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
// its cache, which is replaced wholesale.
type generation struct {
	id uint64
	// replaced is closed when a newer generation takes over.
	replaced  chan struct{}
	revisions map[string]string
	// act is the activated set (compiler, store), for explanations and the
	// decision-log mask; the reference query holds it anyway.
	act  *activation
	ref  *reference
	prog *program // nil: every decision goes through topdown
	// cacheSpec says which input fields an L4 decision depends on;
	// cacheable is false when decisions cannot be cached (nondeterministic
	// builtins such as time.now_ns).
	cacheSpec cacheSpec
	cacheable bool
	cache     atomic.Pointer[decisionCache]
}

func (e *Engine) compile(ctx context.Context, bundles []*Bundle) (*generation, error) {
	act, err := activate(ctx, bundles, e.library)
	if err != nil {
		if !errorsIsBundle(err) {
			err = fmt.Errorf("%w: %w", ErrBundle, err)
		}
		return nil, err
	}
	if err := checkPlacement(act.compiler); err != nil {
		return nil, err
	}
	ref, err := prepareReference(ctx, act)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundle, err)
	}
	g := &generation{id: e.nextID.Add(1), revisions: act.revisions, act: act, ref: ref, replaced: make(chan struct{})}
	if !e.cfg.Topdown {
		g.prog, err = compileProgram(ctx, act)
		switch {
		case errors.Is(err, errNoProgram):
			e.log.Info("native policy program off for this bundle set; decisions use topdown", "reason", err)
		case err != nil:
			return nil, fmt.Errorf("%w: %w", ErrBundle, err)
		}
		if g.prog != nil {
			for _, note := range g.prog.notes {
				e.log.Info("package evaluated by topdown", "detail", note)
			}
		}
	}
	g.cacheSpec, g.cacheable = cacheKey(act.compiler, g.prog)
	if e.cfg.CacheSize > 0 {
		g.resetCache(e.cfg.CacheSize)
	}
	return g, nil
}

// cacheKey chooses the L4 cache key: the fields the native rules read
// when every package is native, else the whole L4 input; not cacheable
// when a nondeterministic builtin (time, randomness, HTTP) is used anywhere.
func cacheKey(c *ast.Compiler, prog *program) (cacheSpec, bool) {
	if usesNondeterministic(c) {
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

func usesNondeterministic(c *ast.Compiler) bool {
	found := false
	for _, m := range c.Modules {
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
	return g.ref.decide(ctx, in)
}
