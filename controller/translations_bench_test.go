package controller

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/regomesh/regomesh/policy/istio"
)

// BenchmarkPolicyRebuild is the controller's work for one changed
// AuthorizationPolicy of 1,000 (BenchmarkAckFromAPIServer's policies):
// converting, translating and archiving the mesh bundle, and the
// warnings status reads. "full" does it all again, as the controller did
// before it kept translations (every object converted, the set
// translated whole, then the AuthorizationPolicies again for their
// warnings); "incremental" is the controller now. The ratio is the gain.
//
//	go test -run XXX -bench PolicyRebuild ./controller/
func BenchmarkPolicyRebuild(b *testing.B) {
	const n = 1000
	aps := make([]*clientv1.AuthorizationPolicy, n)
	for i := range n {
		aps[i] = benchPolicy(i, 0)
	}
	opts := Config{}.withDefaults().istioOptions("")
	b.Run("full", func(b *testing.B) {
		store := newPolicyStore(opts)
		i := 0
		for b.Loop() {
			i++
			aps[(i*13)%n] = benchPolicy((i*13)%n, i)
			clear(store.apsSeen)
			res, _ := store.resources(policyObjects{aps: slices.Clone(aps)})
			tr, err := istio.TranslateAll(res, opts)
			if err != nil {
				b.Fatal(err)
			}
			var archive bytes.Buffer
			if err := tr.WriteBundleTarGz(&archive); err != nil {
				b.Fatal(err)
			}
			_ = tr.Revision()
			if _, err := istio.Translate(res.AuthorizationPolicies, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("incremental", func(b *testing.B) {
		store := newPolicyStore(opts)
		t := newTranslations(opts)
		i := 0
		for b.Loop() {
			i++
			aps[(i*13)%n] = benchPolicy((i*13)%n, i)
			res, _ := store.resources(policyObjects{aps: slices.Clone(aps)})
			if _, err := t.build(res, nil); err != nil {
				b.Fatal(err)
			}
			_ = t.warnings()
		}
	})
}

// benchPolicy is BenchmarkAckFromAPIServer's policy i at its rev-th edit.
func benchPolicy(i, rev int) *clientv1.AuthorizationPolicy {
	return &clientv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: fmt.Sprintf("policy-%d", i), UID: types.UID(fmt.Sprint(i)), Generation: int64(rev + 1)},
		Spec: securityv1beta1.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%500)}},
			Rules: []*securityv1beta1.Rule{{
				From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{fmt.Sprintf("td.test/ns/shop/sa/client-%d", i+rev)}}}},
			}},
		},
	}
}
