package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

// DefaultRegoSelector selects the ConfigMaps whose Rego the controller
// adds to every bundle it serves (docs/user-rego.md).
const DefaultRegoSelector = "regomesh.io/rego=true"

// User Rego, the rules (docs/user-rego.md):
//
//   - Rego decides for the whole mesh (the library does not confine a
//     package to its namespace's workloads), so only ConfigMaps in
//     Config.RegoNamespaces are taken, by default the root namespace, where
//     AuthorizationPolicies apply mesh-wide too: a tenant who may write
//     ConfigMaps in its own namespace must not decide for others;
//   - every key of a selected ConfigMap that ends in ".rego" is one module;
//     other keys are ignored, and a ConfigMap with no such key is refused;
//   - a ConfigMap in namespace N may declare only packages under
//     mesh.policies.N.<name> (N is the library's policy owner, so its
//     contributions are named "N/<name>"), which no translated policy
//     uses (those are under mesh.policies.istio and
//     mesh.policies.istio_peerauthentication, whose owners no namespace
//     may take): user Rego cannot shadow them, nor the library;
//   - one package, or a package and one below it, belongs to one
//     ConfigMap: of two in a namespace the first by name keeps it;
//   - a ConfigMap must load, alone with the library, in the engine the
//     proxies run (parse, compile, the library contract's checks).
//
// A ConfigMap that breaks a rule is reported (its Problem, an Event on
// it) and its last good version (same UID) stays in the bundles; with
// none, it is left out. Nothing else changes.

// reservedOwners are the owners of translated policies.
var reservedOwners = []string{
	strings.TrimPrefix(istio.Root, "mesh/policies/"),
	strings.TrimPrefix(istio.PeerRoot, "mesh/policies/"),
}

// regoSource is one version of a ConfigMap's Rego as checked alone.
type regoSource struct {
	uid             types.UID
	resourceVersion string
	// modules are bundle file name -> source:
	// mesh/policies/<namespace>/<configmap>/<key>.
	modules map[string]string
	// packages are the modules' package paths, without "data."
	packages []string
	err      error
}

// regoStore holds each selected ConfigMap's last check (kept while its
// resourceVersion stays: a ConfigMap has no generation) and its last
// good version.
type regoStore struct {
	// namespaces are those whose ConfigMaps may add Rego.
	namespaces []string
	seen       map[string]*regoSource // by "<namespace>/<name>"
	good       map[string]*regoSource
}

func newRegoStore(namespaces []string) *regoStore {
	return &regoStore{namespaces: namespaces, seen: map[string]*regoSource{}, good: map[string]*regoSource{}}
}

// regoRefusal is a version of a ConfigMap refused, for its Event.
type regoRefusal struct {
	cm  *corev1.ConfigMap
	err error
}

// modules returns the user modules in force (bundle file name -> source),
// a Problem per ConfigMap refused, and the refusals to report on the
// ConfigMaps.
func (s *regoStore) modules(ctx context.Context, cms []*corev1.ConfigMap) (map[string]string, []Problem, []regoRefusal) {
	slices.SortFunc(cms, func(a, b *corev1.ConfigMap) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	out := map[string]string{}
	var problems []Problem
	var refused []regoRefusal
	owned := packageOwners{}
	listed := map[string]bool{}
	for _, cm := range cms {
		key := cm.Namespace + "/" + cm.Name
		listed[key] = true
		src := s.check(ctx, cm)
		err := src.err
		if err == nil {
			err = owned.conflict(cm, src)
		}
		use := src
		if err != nil {
			refused = append(refused, regoRefusal{cm: cm, err: err})
			p := Problem{Kind: "ConfigMap", Namespace: cm.Namespace, Name: cm.Name, Err: err}
			use = nil
			if g := s.good[key]; g != nil && g.uid == cm.UID && owned.conflict(cm, g) == nil {
				use = g
				p.KeptVersion = g.resourceVersion
			}
			problems = append(problems, p)
		} else {
			s.good[key] = src
		}
		if use != nil {
			owned.claim(cm, use)
			maps.Copy(out, use.modules)
		}
	}
	maps.DeleteFunc(s.seen, func(k string, _ *regoSource) bool { return !listed[k] })
	maps.DeleteFunc(s.good, func(k string, _ *regoSource) bool { return !listed[k] })
	return out, problems, refused
}

// packageOwners are, per namespace, the ConfigMap each package is from.
type packageOwners map[string]map[string]string

// conflict says which package of src another ConfigMap of its namespace
// owns (the same, or one above or below it).
func (o packageOwners) conflict(cm *corev1.ConfigMap, src *regoSource) error {
	for _, p := range src.packages {
		for q, owner := range o[cm.Namespace] {
			if p == q || strings.HasPrefix(p, q+".") || strings.HasPrefix(q, p+".") {
				return fmt.Errorf("controller: package %s: ConfigMap %s/%s declares %s: a package belongs to one ConfigMap (the first by name); see docs/user-rego.md", p, cm.Namespace, owner, q)
			}
		}
	}
	return nil
}

func (o packageOwners) claim(cm *corev1.ConfigMap, src *regoSource) {
	if o[cm.Namespace] == nil {
		o[cm.Namespace] = map[string]string{}
	}
	for _, p := range src.packages {
		o[cm.Namespace][p] = cm.Name
	}
}

// check is cm's Rego checked alone, again only when cm changed.
func (s *regoStore) check(ctx context.Context, cm *corev1.ConfigMap) *regoSource {
	key := cm.Namespace + "/" + cm.Name
	if src := s.seen[key]; src != nil && src.uid == cm.UID && src.resourceVersion == cm.ResourceVersion {
		return src
	}
	src := &regoSource{uid: cm.UID, resourceVersion: cm.ResourceVersion}
	if !slices.Contains(s.namespaces, cm.Namespace) {
		src.err = fmt.Errorf("controller: namespace %s may not add Rego: Rego decides for the whole mesh, so it is taken only from the namespaces --rego-configmap-namespaces lists (%s) (docs/user-rego.md)", cm.Namespace, strings.Join(s.namespaces, ", "))
	} else {
		src.modules, src.packages, src.err = checkRego(ctx, cm)
	}
	s.seen[key] = src
	return src
}

// checkRego parses cm's modules, checks their packages, and loads them
// with the library into an engine of their own.
func checkRego(ctx context.Context, cm *corev1.ConfigMap) (map[string]string, []string, error) {
	if slices.Contains(reservedOwners, cm.Namespace) {
		return nil, nil, fmt.Errorf("controller: namespace %s is the owner of translated policies (mesh.policies.%s): user Rego there could replace them; put it in another namespace (docs/user-rego.md)", cm.Namespace, cm.Namespace)
	}
	root := "mesh/policies/" + cm.Namespace
	raw := &bundle.Bundle{Manifest: bundle.Manifest{Revision: cm.ResourceVersion, Roots: &[]string{root}}, Data: map[string]any{}}
	modules := map[string]string{}
	var packages []string
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
		if !strings.HasSuffix(k, ".rego") {
			continue
		}
		file := root + "/" + cm.Name + "/" + k
		m, err := ast.ParseModuleWithOpts(k, cm.Data[k], ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pkg, err := userPackage(m, cm.Namespace)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		modules[file] = cm.Data[k]
		packages = append(packages, pkg)
		raw.Modules = append(raw.Modules, bundle.ModuleFile{URL: "/" + file, Path: "/" + file, RelativePath: file, Raw: []byte(cm.Data[k]), Parsed: m})
	}
	switch {
	case len(errs) > 0:
		return nil, nil, fmt.Errorf("controller: %w", errors.Join(errs...))
	case len(modules) == 0:
		return nil, nil, errors.New("controller: no key ending in .rego: nothing to add to the bundles (docs/user-rego.md)")
	}
	if err := loadAlone(ctx, cm, raw); err != nil {
		return nil, nil, err
	}
	slices.Sort(packages)
	return modules, slices.Compact(packages), nil
}

// userPackage is m's package without "data.", if namespace may declare it.
func userPackage(m *ast.Module, namespace string) (string, error) {
	path := m.Package.Path
	s := strings.TrimPrefix(path.String(), "data.")
	ok := len(path) >= 5
	for i, want := range []string{"mesh", "policies", namespace} {
		if !ok {
			break
		}
		str, isString := path[i+1].Value.(ast.String)
		ok = isString && string(str) == want
	}
	if !ok {
		return "", fmt.Errorf("package %s: Rego from a ConfigMap in namespace %s must be in a package under mesh.policies[%q].<name> (docs/user-rego.md)", s, namespace, namespace)
	}
	return s, nil
}

// loadAlone loads raw with the library into an engine of its own: the
// proxies' engine, so what passes here is what they load.
func loadAlone(ctx context.Context, cm *corev1.ConfigMap, raw *bundle.Bundle) error {
	e, err := policy.NewEngine(policy.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	b, err := policy.NewBundle("ConfigMap "+cm.Namespace+"/"+cm.Name, raw)
	if err == nil {
		err = e.Load(ctx, b)
	}
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	return nil
}

// reasonRegoRefused is the reason of the Event on a ConfigMap whose Rego
// was refused.
const reasonRegoRefused = "RegoRefused"

// reportRego writes a Warning Event on each ConfigMap refused, once per
// version and error, as the leader writes status: kubectl describe
// shows it beside the ConfigMap. A write that fails is logged and not
// tried again (the Problem is still in /debug/state).
func (c *Controller) reportRego(ctx context.Context, refused []regoRefusal) {
	if !c.Leading() {
		return
	}
	reported := map[string]bool{}
	for _, r := range refused {
		key := string(r.cm.UID) + "/" + r.cm.ResourceVersion + "/" + r.err.Error()
		reported[key] = true
		if c.regoReported[key] {
			continue
		}
		now := metav1.Now()
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{GenerateName: r.cm.Name + ".", Namespace: r.cm.Namespace},
			InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", APIVersion: "v1", Namespace: r.cm.Namespace, Name: r.cm.Name,
				UID: r.cm.UID, ResourceVersion: r.cm.ResourceVersion},
			Reason: reasonRegoRefused, Message: eventMessage(r.err), Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: "regomesh-controller"},
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
		}
		if _, err := c.kube.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil && ctx.Err() == nil {
			c.log.Warn("Event not written", "configmap", r.cm.Namespace+"/"+r.cm.Name, "err", err)
		}
	}
	c.regoReported = reported
}

// eventMessage is err within the API server's limit on an Event's
// message (1 KiB).
func eventMessage(err error) string {
	const limit = 1024
	s := err.Error()
	if len(s) > limit {
		s = s[:limit-3] + "..."
	}
	return s
}
