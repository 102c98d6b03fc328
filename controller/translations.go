package controller

import (
	"fmt"
	"maps"
	"slices"

	"github.com/regomesh/regomesh/policy/istio"
)

// translations builds one bundle (the mesh-wide one, or one waypoint's)
// again after a change, translating only what changed: each
// AuthorizationPolicy's module and warnings are kept by the *istio.Policy
// they came from, which the policyStore hands out again, the same
// pointer, for as long as the object's resourceVersion stays. A
// PeerAuthentication's module depends on every other (the most specific
// one decides), so the PeerAuthentications are translated together, again
// only when one of them changed.
//
// Invariant: build's output equals translating the whole set with
// istio.TranslateAll and adding the user modules (TestIncrementalBuild
// holds it to that after random changes). What it costs per change is the
// changed policies' translation plus one pass over the set's pointers and
// modules to assemble, hash and archive them.
type translations struct {
	opts istio.Options
	// aps is each AuthorizationPolicy's translation alone: one module.
	aps map[*istio.Policy]*istio.Translation
	// peers is the PeerAuthentications' translation, for the set in
	// peerSet (the same pointers, in order).
	peers   *istio.Translation
	peerSet []*istio.PeerAuthentication
	// entries are the last archive's modules as tar entries.
	entries tarEntries
}

func newTranslations(opts istio.Options) *translations {
	return &translations{opts: opts, aps: map[*istio.Policy]*istio.Translation{}}
}

// build returns the bundle of res and the user modules (bundle file name
// -> Rego source), or the first policy's translation error. Translations
// of policies no longer in res are forgotten.
func (t *translations) build(res *istio.Resources, user map[string]string) (*Bundle, error) {
	tr, err := t.translate(res)
	if err != nil {
		return nil, fmt.Errorf("controller: translate: %w", err)
	}
	for name, src := range user {
		tr.Modules[name] = src
	}
	return newBundle(tr, &t.entries)
}

// translate is istio.TranslateAll(res, t.opts), from the translations
// kept where the policies did not change.
func (t *translations) translate(res *istio.Resources) (*istio.Translation, error) {
	out := &istio.Translation{Modules: make(map[string]string, len(res.AuthorizationPolicies)+len(res.PeerAuthentications))}
	seen := make(map[*istio.Policy]*istio.Translation, len(res.AuthorizationPolicies))
	for _, p := range res.AuthorizationPolicies {
		tr := t.aps[p]
		if tr == nil {
			var err error
			if tr, err = istio.Translate([]*istio.Policy{p}, t.opts); err != nil {
				return nil, err
			}
		}
		if _, dup := out.Modules[istio.ModuleFile(p)]; dup {
			// Two policies of one name: the translator says so, in its words.
			return istio.TranslateAll(res, t.opts)
		}
		seen[p] = tr
		maps.Copy(out.Modules, tr.Modules)
		out.Warnings = append(out.Warnings, tr.Warnings...)
	}
	t.aps = seen
	if len(res.PeerAuthentications) > 0 {
		if !slices.Equal(t.peerSet, res.PeerAuthentications) {
			tr, err := istio.TranslateAll(&istio.Resources{PeerAuthentications: res.PeerAuthentications}, t.opts)
			if err != nil {
				return nil, err
			}
			t.peers, t.peerSet = tr, slices.Clone(res.PeerAuthentications)
		}
		maps.Copy(out.Modules, t.peers.Modules)
		out.Warnings = append(out.Warnings, t.peers.Warnings...)
	}
	if len(res.RequestAuthentications) > 0 {
		// Validation and a warning each: cheap, and in TranslateAll's words.
		tr, err := istio.TranslateAll(&istio.Resources{RequestAuthentications: res.RequestAuthentications}, t.opts)
		if err != nil {
			return nil, err
		}
		out.Warnings = append(out.Warnings, tr.Warnings...)
	}
	return out, nil
}

// warnings are each AuthorizationPolicy's translation warnings, by
// "<namespace>/<name>", from the last build: each policy translated
// alone, so a PeerAuthentication of the same name cannot be mistaken for
// it.
func (t *translations) warnings() map[string][]istio.Warning {
	out := map[string][]istio.Warning{}
	for _, tr := range t.aps {
		for _, w := range tr.Warnings {
			out[w.Policy] = append(out[w.Policy], w)
		}
	}
	return out
}

// bundleBuilds are the translations kept for each bundle: the mesh-wide
// one and each waypoint's.
type bundleBuilds struct {
	cfg       Config
	mesh      *translations
	waypoints map[string]*translations
}

func newBundleBuilds(cfg Config) *bundleBuilds {
	return &bundleBuilds{cfg: cfg, mesh: newTranslations(cfg.istioOptions("")), waypoints: map[string]*translations{}}
}

// waypoint is the translations of waypoint ref's bundle.
func (b *bundleBuilds) waypoint(ref string) *translations {
	t := b.waypoints[ref]
	if t == nil {
		t = newTranslations(b.cfg.istioOptions(ref))
		b.waypoints[ref] = t
	}
	return t
}

// forget drops the translations of waypoints not in refs.
func (b *bundleBuilds) forget(refs []string) {
	maps.DeleteFunc(b.waypoints, func(ref string, _ *translations) bool { return !slices.Contains(refs, ref) })
}
