package controller

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"

	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/regomesh/regomesh/policy/istio"
)

// Bundle is one OPA bundle of translated policies, built and never
// modified.
type Bundle struct {
	// Revision is the bundle's .manifest revision (a hash of its modules).
	Revision string
	// Translation is what the bundle holds: modules and warnings.
	Translation *istio.Translation
	// Archive is the bundle as a .tar.gz, as `opa build` lays it out.
	Archive []byte
}

// Problem is an object left out of an update, or a build that failed.
type Problem struct {
	Kind      string // "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "State" or "Bundle"
	Namespace string
	Name      string
	// Generation is the object's metadata.generation that failed.
	Generation int64
	// Kept is the generation still in force in its place, or 0 for none.
	Kept int64
	Err  error
}

func (p Problem) String() string {
	s := p.Kind
	switch {
	case p.Namespace != "":
		s += " " + p.Namespace + "/" + p.Name
	case p.Name != "":
		s += " " + p.Name
	}
	s += ": " + p.Err.Error()
	if p.Kept != 0 {
		s += fmt.Sprintf(" (generation %d stays in force)", p.Kept)
	}
	return s
}

// kept is the last valid version of one object: valid for as long as the
// object with that UID exists.
type kept[T any] struct {
	uid        types.UID
	generation int64
	value      T
}

// policyStore holds, per Istio security object, its last valid version,
// so that an invalid change is excluded without taking the object's
// previous meaning away (nor anything else's).
type policyStore struct {
	opts istio.Options
	aps  map[string]kept[*istio.Policy]
	pas  map[string]kept[*istio.PeerAuthentication]
	ras  map[string]kept[*istio.RequestAuthentication]
}

func newPolicyStore(opts istio.Options) *policyStore {
	return &policyStore{
		opts: opts,
		aps:  map[string]kept[*istio.Policy]{},
		pas:  map[string]kept[*istio.PeerAuthentication]{},
		ras:  map[string]kept[*istio.RequestAuthentication]{},
	}
}

// policyObjects are the security objects one build reads.
type policyObjects struct {
	aps []*clientv1.AuthorizationPolicy
	pas []*clientv1.PeerAuthentication
	ras []*clientv1.RequestAuthentication
}

// resources converts and validates every object, returning the resources
// in force (sorted by namespace and name) and a Problem per invalid one.
func (s *policyStore) resources(objs policyObjects) (*istio.Resources, []Problem) {
	var problems []Problem
	res := &istio.Resources{}
	res.AuthorizationPolicies = resolve(s.aps, objs.aps, "AuthorizationPolicy", func(o *clientv1.AuthorizationPolicy) (*istio.Policy, error) {
		p, err := istio.Convert(o)
		if err != nil {
			return nil, err
		}
		return p, istio.Validate(p, s.opts)
	}, &problems)
	res.PeerAuthentications = resolve(s.pas, objs.pas, "PeerAuthentication", func(o *clientv1.PeerAuthentication) (*istio.PeerAuthentication, error) {
		pa := istio.ConvertPeerAuthentication(o)
		return pa, istio.ValidatePeerAuthentication(pa)
	}, &problems)
	res.RequestAuthentications = resolve(s.ras, objs.ras, "RequestAuthentication", func(o *clientv1.RequestAuthentication) (*istio.RequestAuthentication, error) {
		ra := istio.ConvertRequestAuthentication(o)
		return ra, istio.ValidateRequestAuthentication(ra)
	}, &problems)
	return res, problems
}

// object is what resolve needs of a client-go object.
type object interface {
	comparable
	GetNamespace() string
	GetName() string
	GetUID() types.UID
	GetGeneration() int64
}

// resolve converts each object; an invalid one is reported and replaced
// by its last valid version, if the same object (by UID) had one.
// Versions of objects no longer listed are forgotten.
func resolve[O object, T any](store map[string]kept[T], objs []O, kind string, convert func(O) (T, error), problems *[]Problem) []T {
	slices.SortFunc(objs, func(a, b O) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	listed := map[string]bool{}
	var out []T
	for _, o := range objs {
		key := o.GetNamespace() + "/" + o.GetName()
		listed[key] = true
		v, err := convert(o)
		if err == nil {
			store[key] = kept[T]{uid: o.GetUID(), generation: o.GetGeneration(), value: v}
			out = append(out, v)
			continue
		}
		p := Problem{Kind: kind, Namespace: o.GetNamespace(), Name: o.GetName(), Generation: o.GetGeneration(), Err: err}
		if k, ok := store[key]; ok && k.uid == o.GetUID() {
			p.Kept = k.generation
			out = append(out, k.value)
		} else {
			delete(store, key)
		}
		*problems = append(*problems, p)
	}
	maps.DeleteFunc(store, func(key string, _ kept[T]) bool { return !listed[key] })
	return out
}

// buildBundle translates res into a bundle; waypoint is the Gateway it is
// for ("" for the mesh-wide bundle).
func buildBundle(res *istio.Resources, opts istio.Options) (*Bundle, error) {
	tr, err := istio.TranslateAll(res, opts)
	if err != nil {
		return nil, fmt.Errorf("controller: translate: %w", err)
	}
	var archive bytes.Buffer
	if err := tr.WriteBundleTarGz(&archive); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	return &Bundle{Revision: tr.Revision(), Translation: tr, Archive: archive.Bytes()}, nil
}

// policyWarnings are each AuthorizationPolicy's translation warnings, by
// "<namespace>/<name>". They come from translating the
// AuthorizationPolicies alone: in a whole set's warnings a
// PeerAuthentication of the same name would be indistinguishable.
func policyWarnings(aps []*istio.Policy, opts istio.Options) map[string][]istio.Warning {
	tr, err := istio.Translate(aps, opts)
	if err != nil {
		return nil // resources are validated before; buildBundle reports it
	}
	out := map[string][]istio.Warning{}
	for _, w := range tr.Warnings {
		out[w.Policy] = append(out[w.Policy], w)
	}
	return out
}

// objectMeta is metav1.Object's accessors resolve needs, asserted here
// for the three security types.
var (
	_ metav1.Object = (*clientv1.AuthorizationPolicy)(nil)
	_ metav1.Object = (*clientv1.PeerAuthentication)(nil)
	_ metav1.Object = (*clientv1.RequestAuthentication)(nil)
)
