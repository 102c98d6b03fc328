package controller

import (
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
	Kind      string // "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "ConfigMap", "State" or "Bundle"
	Namespace string
	Name      string
	// Generation is the object's metadata.generation that failed.
	Generation int64
	// Kept is the generation still in force in its place, or 0 for none.
	Kept int64
	// KeptVersion is, for a ConfigMap (which has no generation), the
	// resourceVersion still in force in its place, or "" for none.
	KeptVersion string
	Err         error
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
	if p.KeptVersion != "" {
		s += " (resourceVersion " + p.KeptVersion + " stays in force)"
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

// converted is one object's conversion, valid for as long as the object
// with that UID keeps that generation (its spec) and those annotations
// (istio.io/dry-run): what the conversion reads. Its status, which this
// controller writes, does not count.
type converted[T any] struct {
	uid         types.UID
	generation  int64
	annotations map[string]string
	value       T
	err         error
}

// policyStore holds, per Istio security object, its last valid version,
// so that an invalid change is excluded without taking the object's
// previous meaning away (nor anything else's), and its last conversion,
// so that an unchanged object is not converted again: its value is the
// same pointer from one build to the next, which is what the
// translations are kept by.
type policyStore struct {
	opts istio.Options
	aps  map[string]kept[*istio.Policy]
	pas  map[string]kept[*istio.PeerAuthentication]
	ras  map[string]kept[*istio.RequestAuthentication]

	apsSeen map[string]converted[*istio.Policy]
	pasSeen map[string]converted[*istio.PeerAuthentication]
	rasSeen map[string]converted[*istio.RequestAuthentication]
}

func newPolicyStore(opts istio.Options) *policyStore {
	return &policyStore{
		opts:    opts,
		aps:     map[string]kept[*istio.Policy]{},
		pas:     map[string]kept[*istio.PeerAuthentication]{},
		ras:     map[string]kept[*istio.RequestAuthentication]{},
		apsSeen: map[string]converted[*istio.Policy]{},
		pasSeen: map[string]converted[*istio.PeerAuthentication]{},
		rasSeen: map[string]converted[*istio.RequestAuthentication]{},
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
	res.AuthorizationPolicies = resolve(s.aps, s.apsSeen, objs.aps, "AuthorizationPolicy", func(o *clientv1.AuthorizationPolicy) (*istio.Policy, error) {
		p, err := istio.Convert(o)
		if err != nil {
			return nil, err
		}
		return p, istio.Validate(p, s.opts)
	}, &problems)
	res.PeerAuthentications = resolve(s.pas, s.pasSeen, objs.pas, "PeerAuthentication", func(o *clientv1.PeerAuthentication) (*istio.PeerAuthentication, error) {
		pa := istio.ConvertPeerAuthentication(o)
		return pa, istio.ValidatePeerAuthentication(pa)
	}, &problems)
	res.RequestAuthentications = resolve(s.ras, s.rasSeen, objs.ras, "RequestAuthentication", func(o *clientv1.RequestAuthentication) (*istio.RequestAuthentication, error) {
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
	GetAnnotations() map[string]string
}

// resolve converts each object (again only when what the conversion
// reads moved); an invalid one is reported and replaced by its
// last valid version, if the same object (by UID) had one. Versions of
// objects no longer listed are forgotten.
func resolve[O object, T any](store map[string]kept[T], seen map[string]converted[T], objs []O, kind string, convert func(O) (T, error), problems *[]Problem) []T {
	slices.SortFunc(objs, func(a, b O) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	listed := map[string]bool{}
	var out []T
	for _, o := range objs {
		key := o.GetNamespace() + "/" + o.GetName()
		listed[key] = true
		c, ok := seen[key]
		if !ok || c.uid != o.GetUID() || c.generation != o.GetGeneration() || !maps.Equal(c.annotations, o.GetAnnotations()) {
			c = converted[T]{uid: o.GetUID(), generation: o.GetGeneration(), annotations: o.GetAnnotations()}
			c.value, c.err = convert(o)
			seen[key] = c
		}
		v, err := c.value, c.err
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
	maps.DeleteFunc(seen, func(key string, _ converted[T]) bool { return !listed[key] })
	return out
}

// objectMeta is metav1.Object's accessors resolve needs, asserted here
// for the three security types.
var (
	_ metav1.Object = (*clientv1.AuthorizationPolicy)(nil)
	_ metav1.Object = (*clientv1.PeerAuthentication)(nil)
	_ metav1.Object = (*clientv1.RequestAuthentication)(nil)
)
