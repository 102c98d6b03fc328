package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	meshrego "github.com/regomesh/regomesh/rego"
)

// Authorizer is what proxies ask: one decision per connection (L4) or
// request (L7).
type Authorizer interface {
	Decide(ctx context.Context, in Input) (Decision, error)
}

var _ Authorizer = (*Engine)(nil)

// Config configures an Engine. The zero value is usable.
type Config struct {
	// Metrics receives decision and bundle metrics; nil disables them.
	Metrics *Metrics
	// DecisionLog receives one event per decision; nil disables decision logs.
	DecisionLog *DecisionLogger
	// Logger is the engine's logger; nil means slog.Default().
	Logger *slog.Logger
	// CacheSize bounds the L4 decision cache, in entries, rounded down to
	// whole sets of 64 (16 shards of sets of 4), and at least 64. 0 means
	// 65536; a negative value disables the cache.
	CacheSize int
	// Topdown evaluates every decision with OPA's topdown evaluator instead
	// of the native program: the reference semantics, for comparison.
	Topdown bool
}

const defaultCacheSize = 65536

// Engine decides with the last good bundle set. Loads are serialised,
// compiled off the decision path and swapped in atomically; a set that
// fails to read, verify or compile is rejected and the previous one stays
// in force. Before the first good set every decision is a deny with reason
// "no policy loaded". Decide is safe for concurrent use.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	library map[string]*ast.Module

	loadMu sync.Mutex
	// policies counts the policy packages of the set in force, so a load
	// that would remove them all is caught; guarded by loadMu.
	policies int
	// packages keeps lowered policy packages by content, so a load that
	// changes few compiles only those; guarded by loadMu.
	packages *packageCache
	// wholeOnly compiles every set whole: the tests' reference for loading
	// package by package.
	wholeOnly bool
	current   atomic.Pointer[generation]
	firstLoad chan struct{} // closed by the first successful Load
	shadow    atomic.Pointer[generation]
	nextID    atomic.Uint64
}

// NewEngine returns an engine with no policy loaded.
func NewEngine(cfg Config) (*Engine, error) {
	library, err := meshrego.Modules()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = defaultCacheSize
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Engine{cfg: cfg, log: log.With("component", "policy"), library: library, firstLoad: make(chan struct{}),
		packages: newPackageCache(library)}, nil
}

// Load compiles bundles as one set and, if it compiles, makes it the set in
// force. On error the previous set stays in force and the error (wrapping
// ErrBundle) names the file and line at fault. A set with no policy
// package does not replace one that has some (ErrNoPolicy), unless one of
// its bundles declares itself empty in its .manifest (EmptyBundleMetadata).
func (e *Engine) Load(ctx context.Context, bundles ...*Bundle) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	g, err := e.compileRecovering(ctx, bundles)
	if err != nil {
		e.cfg.Metrics.bundleLoad(false)
		e.log.Error("bundle set rejected; the previous policy stays in force", "bundles", bundleNames(bundles), "error", err)
		return err
	}
	policies := setPolicyPackages(bundles)
	if err := e.checkKeepsPolicy(bundles, policies); err != nil {
		e.cfg.Metrics.bundleLoad(false)
		e.cfg.Metrics.noPolicyRefused()
		e.log.Error("BUNDLE SET REFUSED: it has no policy package and would allow all traffic; the previous policy stays in force",
			"bundles", bundleNames(bundles), "policy_packages_in_force", e.policies, "error", err)
		return err
	}
	e.cfg.Metrics.bundleLoad(true)
	if old := e.current.Swap(g); old != nil {
		close(old.replaced)
	} else {
		close(e.firstLoad)
	}
	e.policies = policies
	e.cfg.Metrics.setRevisions(g.revisions)
	e.log.Info("policy loaded", "generation", g.id, "revisions", g.revisions, "native", g.prog != nil, "cache", g.cacheable,
		"policy_packages", policies, "compiled_alone", g.compiled)
	for _, b := range bundles {
		for _, w := range b.warnings {
			e.log.Warn("bundle holds a rule the library ignores", "bundle", b.Name, "warning", w)
		}
	}
	return nil
}

// compileRecovering is compile, a panic in it (a defect of regomesh's,
// which no bundle may turn into a dead proxy) refusing the set: the
// policy in force stays, and the log has the stack.
func (e *Engine) compileRecovering(ctx context.Context, bundles []*Bundle) (g *generation, err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		stack := debug.Stack()
		if p, ok := r.(*compilePanic); ok {
			r, stack = p.value, p.stack
		}
		e.log.Error("BUG: compiling a bundle set panicked; the previous policy stays in force", "bundles", bundleNames(bundles),
			"panic", fmt.Sprint(r), "stack", string(stack))
		g, err = nil, &bundleError{names: bundleNames(bundles), kind: ErrBundle,
			detail: fmt.Sprintf("compiling it hit a defect in regomesh (%v)", r),
			hint:   "the policy in force stays; please report this with the bundle"}
	}()
	return e.compile(ctx, bundles)
}

// checkKeepsPolicy refuses a set without policy packages in place of one
// with some: an emptied bundle directory must not turn into allow-all.
// A bundle that declares itself empty says the change is meant.
func (e *Engine) checkKeepsPolicy(bundles []*Bundle, policies int) error {
	if policies > 0 || e.policies == 0 || anyDeclaredEmpty(bundles) {
		return nil
	}
	return &bundleError{names: bundleNames(bundles), kind: ErrNoPolicy,
		detail: fmt.Sprintf("has no policy package (data.mesh.policies.<owner>.<name>) and would replace the %d in force, allowing all traffic", e.policies),
		hint:   emptyBundleHint}
}

// LoadShadow evaluates bundles beside the enforced set from now on: every
// decision is also taken by the shadow set and disagreements are counted
// and logged. The enforced decision is unaffected. No bundles: shadowing stops.
func (e *Engine) LoadShadow(ctx context.Context, bundles ...*Bundle) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	if len(bundles) == 0 {
		e.shadow.Store(nil)
		return nil
	}
	g, err := e.compileRecovering(ctx, bundles)
	if err != nil {
		return fmt.Errorf("policy: shadow set: %w", err)
	}
	e.shadow.Store(g)
	return nil
}

// Invalidate drops cached decisions; callers invoke it when mesh state the
// input is built from changes.
func (e *Engine) Invalidate() {
	for _, g := range []*generation{e.current.Load(), e.shadow.Load()} {
		if g != nil {
			g.resetCache(e.cfg.CacheSize)
		}
	}
}

// Generation identifies the set in force (0: none). It changes on every
// successful Load, so holders of long-lived connections know to re-check.
func (e *Engine) Generation() uint64 {
	if g := e.current.Load(); g != nil {
		return g.id
	}
	return 0
}

// Changed returns a channel closed when the policy in force changes (the
// next successful Load). Holders of long-lived connections wait on it,
// re-check their connections, and call Changed again.
func (e *Engine) Changed() <-chan struct{} {
	if g := e.current.Load(); g != nil {
		return g.replaced
	}
	return e.firstLoad
}

// Revisions maps each bundle in force to its manifest revision.
func (e *Engine) Revisions() map[string]string {
	if g := e.current.Load(); g != nil {
		return g.revisions
	}
	return nil
}

// Decide answers one input. It never fails open: on error the decision is
// a deny whose reason says why.
func (e *Engine) Decide(ctx context.Context, in Input) (Decision, error) {
	g := e.current.Load()
	s := scratchPool.Get().(*scratch)
	defer s.release()
	if g != nil {
		g.probe(s, &in) // the key is built from the input as given, before Prepare
		if s.found && e.answersUnprepared(&in) {
			e.cfg.Metrics.observeCacheHit(L4, s.cached)
			return s.cached, nil
		}
	}
	s.in = in
	if in.Request != nil {
		s.req = *in.Request // Prepare derives fields; leave the caller's request alone
		s.in.Request = &s.req
	}
	if err := s.in.Prepare(); err != nil {
		return deny(err.Error()), err
	}
	if g == nil {
		d := deny(ReasonNoPolicy)
		e.cfg.Metrics.observeDecision(in.Layer, d, 0)
		return d, nil
	}
	d, cached := s.hit()
	var start time.Time
	var elapsed time.Duration
	var err error
	if cached {
		e.cfg.Metrics.observeCacheHit(in.Layer, d)
	} else {
		timed := e.cfg.Metrics != nil || e.cfg.DecisionLog != nil
		if timed {
			start = time.Now()
		}
		d, err = g.evaluate(ctx, &s.in)
		if timed {
			elapsed = time.Since(start)
		}
		if err == nil {
			s.store(d)
		}
		e.cfg.Metrics.observeDecision(in.Layer, d, elapsed.Seconds())
	}
	e.record(ctx, g, &s.in, d, start, elapsed, cached)
	return d, err
}

// answersUnprepared reports whether a cache hit for in may be answered
// before Prepare, when nothing else (decision log, shadow set) needs to see
// the decision. Every field Prepare validates is in the key as given, and
// the ports are checked here: a hit is an input identical, as far as
// validation and policy go, to one that passed Prepare and was decided.
// Anything else, including invalid input, takes the full path.
func (e *Engine) answersUnprepared(in *Input) bool {
	return in.Layer == L4 && in.Request == nil && e.cfg.DecisionLog == nil && e.shadow.Load() == nil && portsValid(in)
}

func portsValid(in *Input) bool {
	return in.Source.Port >= 0 && in.Source.Port <= 65535 && in.Destination.Port >= 0 && in.Destination.Port <= 65535
}

// record hands the decision to the shadow comparison and the decision log.
func (e *Engine) record(ctx context.Context, g *generation, in *Input, d Decision, start time.Time, elapsed time.Duration, cached bool) {
	shadow := e.compareShadow(ctx, in, d)
	if e.cfg.DecisionLog == nil {
		return
	}
	if start.IsZero() {
		start = time.Now()
	}
	e.cfg.DecisionLog.Log(DecisionEvent{
		Input: in, Result: d, Bundles: g.revisions, Path: "mesh/authz/decision",
		Timestamp: start, EvalNanos: elapsed.Nanoseconds(), Cached: cached, Shadow: shadow,
		mask: g.mask,
	})
}

// compareShadow decides again with the shadow set, if any, and reports a
// disagreement on allow.
func (e *Engine) compareShadow(ctx context.Context, in *Input, enforced Decision) *Decision {
	s := e.shadow.Load()
	if s == nil {
		return nil
	}
	sc := scratchPool.Get().(*scratch)
	defer sc.release()
	s.probe(sc, in) // prepared inputs key the shadow cache consistently with each other
	sc.in = *in     // its request is not modified again
	d, _, err := s.decide(ctx, sc)
	if err != nil {
		e.log.Warn("shadow policy failed to decide", "error", err)
	}
	if d.Allow != enforced.Allow {
		e.cfg.Metrics.shadowDisagreement(in.Layer, enforced, d)
		e.log.Info("shadow policy disagrees",
			"layer", in.Layer, "source", in.Source.Principal, "destination", in.Destination.Workload,
			"namespace", in.Destination.Namespace, "port", in.Destination.Port,
			"enforced_allow", enforced.Allow, "enforced_policy", enforced.Policy, "enforced_rule", enforced.Rule,
			"shadow_allow", d.Allow, "shadow_policy", d.Policy, "shadow_rule", d.Rule, "shadow_revisions", s.revisions)
	}
	return &d
}

// errorsIsBundle reports whether err already carries ErrBundle.
func errorsIsBundle(err error) bool { return errors.Is(err, ErrBundle) }
