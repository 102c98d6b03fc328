package istio_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	meshrego "github.com/regomesh/regomesh/rego"
)

// providersBundle supplies the CUSTOM provider "ext-authz" the tests use.
const providersBundle = "testdata/providers"

// testProviders are the providers the test bundle set supplies.
var testProviders = []string{"ext-authz"}

// translateYAML decodes and translates a YAML stream of AuthorizationPolicies
// and PeerAuthentications.
func translateYAML(t testing.TB, source, src string, opts istio.Options) (*istio.Translation, error) {
	t.Helper()
	res, _, err := istio.DecodeAll(strings.NewReader(src), source)
	if err != nil {
		return nil, err
	}
	return istio.TranslateAll(res, opts)
}

// engines is a translation loaded into the real engine twice: the native
// program and the topdown reference.
type engines struct {
	native, topdown *policy.Engine
	// fallback lists the packages the native program left to topdown.
	fallback []string
	// byPackage: the native engine loaded the set package by package, not
	// compiled whole.
	byPackage bool
}

// loadEngines writes tr as a bundle directory, reads it back with
// policy.ReadBundle (with the providers bundle when a module reads the
// providers: without it, a set of translated policies alone is loaded
// package by package) and loads both engines.
func loadEngines(t testing.TB, tr *istio.Translation) *engines {
	t.Helper()
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	paths := []string{dir}
	for _, src := range tr.Modules {
		if strings.Contains(src, "data.mesh.providers") {
			paths = append(paths, providersBundle)
			break
		}
	}
	var bundles []*policy.Bundle
	for _, path := range paths {
		b, err := policy.ReadBundle(path, nil)
		if err != nil {
			t.Fatalf("read bundle %s: %v", path, err)
		}
		bundles = append(bundles, b)
	}
	rec := &logRecorder{}
	native := newEngine(t, policy.Config{Logger: slog.New(rec)}, bundles)
	topdown := newEngine(t, policy.Config{Topdown: true, CacheSize: -1, Logger: quietLogger()}, bundles)
	return &engines{native: native, topdown: topdown, fallback: rec.topdownPackages(), byPackage: rec.loadedByPackage()}
}

func newEngine(t testing.TB, cfg policy.Config, bundles []*policy.Bundle) *policy.Engine {
	t.Helper()
	e, err := policy.NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(context.Background(), bundles...); err != nil {
		t.Fatalf("load translated bundle: %v", err)
	}
	return e
}

// decide asks both engines and fails unless they agree.
func (e *engines) decide(t testing.TB, in policy.Input) policy.Decision {
	t.Helper()
	ctx := context.Background()
	want, err := e.topdown.Decide(ctx, in)
	if err != nil {
		t.Fatalf("topdown: %v", err)
	}
	got, err := e.native.Decide(ctx, in)
	if err != nil {
		t.Fatalf("native: %v", err)
	}
	if !decisionsEqual(want, got) {
		t.Fatalf("native and topdown disagree\ntopdown: %+v\nnative:  %+v", describe(want), describe(got))
	}
	return got
}

func decisionsEqual(a, b policy.Decision) bool {
	if a.Verdict != b.Verdict || !slices.Equal(a.Audit, b.Audit) {
		return false
	}
	if (a.DryRun == nil) != (b.DryRun == nil) {
		return false
	}
	return a.DryRun == nil || *a.DryRun == *b.DryRun
}

func describe(d policy.Decision) string {
	s := fmt.Sprintf("%+v audit=%v", d.Verdict, d.Audit)
	if d.DryRun != nil {
		s += fmt.Sprintf(" dry_run=%+v", *d.DryRun)
	}
	return s
}

// strictCompile compiles the translation with the library as
// `opa check --strict` does.
func strictCompile(t testing.TB, tr *istio.Translation) {
	t.Helper()
	if err := compileStrict(tr); err != nil {
		t.Fatalf("strict compile: %v", err)
	}
}

func compileStrict(tr *istio.Translation) error {
	modules, err := meshrego.Modules()
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(tr.Modules)) {
		m, err := ast.ParseModuleWithOpts(name, tr.Modules[name], ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return err
		}
		modules[name] = m
	}
	c := ast.NewCompiler().WithStrict(true)
	if c.Compile(modules); c.Failed() {
		return c.Errors
	}
	return nil
}

// logRecorder is a slog handler that keeps the engine's log records, to
// tell which packages the native program left to topdown.
type logRecorder struct {
	mu      sync.Mutex
	records []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		line += " " + a.Key + "=" + a.Value.String()
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, line)
	r.mu.Unlock()
	return nil
}

// topdownPackages lists the engine's "package evaluated by topdown" details.
func (r *logRecorder) topdownPackages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, line := range r.records {
		if detail, ok := strings.CutPrefix(line, "package evaluated by topdown detail="); ok {
			out = append(out, detail)
		}
	}
	return out
}

// loadedByPackage reports whether the last load compiled the set package
// by package (its "policy loaded" record has compiled_alone >= 0).
func (r *logRecorder) loadedByPackage() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, line := range slices.Backward(r.records) {
		if strings.HasPrefix(line, "policy loaded ") {
			return !strings.Contains(line, " compiled_alone=-1")
		}
	}
	return false
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
