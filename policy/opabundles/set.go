package opabundles

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bundleplugin "github.com/open-policy-agent/opa/v1/plugins/bundle"

	"github.com/regomesh/regomesh/policy"
)

// Options configure a Set. The zero value is usable: no local bundles,
// no metrics, slog.Default().
type Options struct {
	// Local are the proxy's --bundle files (and --verification-key), read
	// at Start and activated with the remote bundles whenever either
	// changes.
	Local policy.BundleFiles
	// LocalPoll is how often the Local files are checked for changes; 0
	// means every 2 seconds.
	LocalPoll time.Duration
	// Metrics counts activations and failures per remote bundle; nil
	// disables them.
	Metrics *Metrics
	// Logger is the component's logger; nil means slog.Default().
	Logger *slog.Logger
	// AfterLoad, if set, runs after every load attempt (ztunnel returns the
	// memory a compile used to the system).
	AfterLoad func()
	// SVID is the proxy's identity for services whose credentials name
	// SVIDPlugin; nil refuses such services.
	SVID *SVIDCredentials
	// Shadow are the proxy's --shadow-bundle files (verified with
	// Local's key): a candidate set the engine decides with beside the set
	// in force, never enforced, reloaded on change like Local
	// (docs/decision-logs.md#shadow-policy).
	Shadow policy.BundleFiles
}

// Set is a proxy's bundle set: its local bundles and the latest good copy
// of each bundle an OPA configuration names, downloaded with OPA's
// v1/download. Every change loads the whole set into the engine.
//
// Invariants:
//   - the engine is only ever given a complete set: every remote bundle is
//     in it. Before each has arrived once nothing is loaded, so every
//     decision denies ("no policy loaded") and Ready reports ErrNotReady,
//     as OPA is not ready before all its bundles have activated;
//   - latest[name] is the copy of remote bundle name that the set in force
//     holds (before the first activation: the copy waiting for the
//     others), and changes only by a load that succeeded with the new copy;
//   - a rejected revision of one bundle changes nothing: the set in force
//     stays, with every bundle's last good copy;
//   - once ready, a Set stays ready: a server going away later leaves the
//     last good set in force.
type Set struct {
	engine  *policy.Engine
	opts    Options
	log     *slog.Logger
	sources []*source // by name

	mu sync.Mutex // serialises loads; guards the fields below
	// locals are the local bundles of the set in force (or to be).
	locals []*policy.Bundle
	latest map[string]*policy.Bundle
	// inForce are the remote copies of the last set loaded, to tell which
	// bundles a load changed.
	inForce map[string]*policy.Bundle
	// why says, per remote bundle not yet activated, what the last attempt
	// met; and under "" why the complete set did not load.
	why map[string]error

	// status reports each remote bundle's status (nil: no status section).
	status *statusReporter

	// ready is set, once, by the first load: read without s.mu, so a
	// readiness probe never waits for a compile.
	ready atomic.Bool

	stopOnce sync.Once
	stop     func()
}

// New prepares the set of cfg's bundles (nil: local bundles only) and
// opts.Local for engine. Nothing is read or downloaded before Start.
func New(engine *policy.Engine, cfg *Config, opts Options) (*Set, error) {
	opts.LocalPoll = cmp.Or(opts.LocalPoll, 2*time.Second)
	log := cmp.Or(opts.Logger, slog.Default()).With("component", "opabundles")
	s := &Set{engine: engine, opts: opts, log: log, latest: map[string]*policy.Bundle{},
		inForce: map[string]*policy.Bundle{}, why: map[string]error{}, stop: func() {}}
	if cfg == nil {
		return s, nil
	}
	if len(cfg.Bundles) == 0 && len(opts.Local.Paths) == 0 {
		return nil, errNothingToLoad
	}
	for _, w := range cfg.Warnings {
		log.Warn("OPA configuration: " + w)
	}
	clients, err := cfg.clients(log, opts.SVID)
	if err != nil {
		return nil, err
	}
	if cfg.Status != nil {
		s.status = newStatusReporter(clients[cfg.Status.Service], cfg.Status, cfg.labels, slices.Sorted(maps.Keys(cfg.Bundles)), log)
		log.Info("reporting bundle status", "service", cfg.Status.Service, "resource", cfg.Status.Resource, "instance_id", InstanceID)
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Bundles)) {
		if slices.Contains(opts.Local.Paths, name) {
			return nil, fmt.Errorf("opabundles: bundle %q of the OPA configuration has the name of a --bundle path: rename one of them", name)
		}
		src := cfg.Bundles[name]
		s.sources = append(s.sources, s.newSource(name, src, clients[src.Service]))
		opts.Metrics.expose(name)
	}
	opts.Metrics.setReady(false)
	return s, nil
}

// Start reads the local bundles and, without remote bundles, loads them
// at once: an error here (a broken --bundle at start) is returned and
// nothing runs; so is a broken shadow bundle, loaded here too. Then it
// starts one downloader per remote bundle and the watch of the local (and
// shadow) files, until Stop.
func (s *Set) Start(ctx context.Context) error {
	stamp := policy.BundlesStamp(s.opts.Local.Paths) // before reading: a change while reading is seen
	locals, err := s.readLocal()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.locals = locals
	if len(s.sources) == 0 {
		err = s.loadLocked(ctx, "start")
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	shadowStamp := policy.BundlesStamp(s.opts.Shadow.Paths)
	if len(s.opts.Shadow.Paths) > 0 {
		if err := s.loadShadow(ctx); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if len(s.opts.Local.Paths) > 0 {
		wg.Go(func() { s.watchLocal(ctx, stamp) })
	}
	if len(s.opts.Shadow.Paths) > 0 {
		wg.Go(func() { s.watchShadow(ctx, shadowStamp) })
	}
	if s.status != nil {
		s.status.due() // every bundle, not downloaded yet
		wg.Go(func() { s.status.run(ctx) })
	}
	for _, src := range s.sources {
		src.downloader.Start(ctx)
		s.log.Info("downloading bundle", "bundle", src.name, "service", src.service, "resource", src.resource)
	}
	s.stop = func() {
		cancel()
		for _, src := range s.sources {
			src.downloader.Stop(context.Background())
		}
		wg.Wait()
	}
	return nil
}

// Stop ends the downloads and the watch, and waits for them: no load
// runs after it returns. The set in force stays in force.
func (s *Set) Stop() {
	s.stopOnce.Do(func() { s.stop() })
}

// Ready returns nil once every remote bundle has been activated (at once
// without remote bundles), and an error wrapping ErrNotReady naming the
// bundles still missing, and why, before.
func (s *Set) Ready() error {
	if s.ready.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready.Load() {
		return nil
	}
	var missing []string
	for _, src := range s.sources {
		if _, ok := s.latest[src.name]; !ok {
			missing = append(missing, describe(src.name, s.why[src.name]))
		}
	}
	if len(missing) == 0 {
		return fmt.Errorf("%w: every bundle has arrived but the set has not loaded: %v", ErrNotReady, cmp.Or(s.why[""], errIncomplete))
	}
	return fmt.Errorf("%w: no good copy yet of bundle %s (docs/bundles.md)", ErrNotReady, strings.Join(missing, "; bundle "))
}

func describe(name string, why error) string {
	if why == nil {
		return name + " (not downloaded yet)"
	}
	return fmt.Sprintf("%s (%v)", name, why)
}

// loadLocked loads the locals and the latest remote copies as one set,
// when every remote bundle has a copy; s.mu is held. On success the copies
// that changed are counted and logged as activated.
func (s *Set) loadLocked(ctx context.Context, cause string) error {
	if len(s.latest) < len(s.sources) {
		return errIncomplete
	}
	bundles := slices.Clone(s.locals)
	for _, src := range s.sources {
		bundles = append(bundles, s.latest[src.name])
	}
	err := s.engine.Load(ctx, bundles...)
	if s.opts.AfterLoad != nil {
		s.opts.AfterLoad()
	}
	if err != nil {
		s.why[""] = err
		return err
	}
	for _, src := range s.sources {
		b := s.latest[src.name]
		if s.inForce[src.name] != b {
			s.status.update(src.name, func(st *bundleplugin.Status) { st.SetActivateSuccess(b.Revision); st.SetError(nil) })
			s.opts.Metrics.activated(src.name)
			s.log.Info("remote bundle activated", "bundle", src.name, "revision", b.Revision,
				"previous_revision", revision(s.inForce[src.name]), "cause", cause)
		}
		delete(s.why, src.name)
	}
	s.inForce = maps.Clone(s.latest)
	delete(s.why, "")
	if !s.ready.Load() {
		s.ready.Store(true)
		s.opts.Metrics.setReady(true)
		s.log.Info("every bundle activated: ready", "revisions", s.engine.Revisions())
	}
	return nil
}

func revision(b *policy.Bundle) string {
	if b == nil {
		return ""
	}
	return b.Revision
}
