package controller

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/regomesh/regomesh/policy/istio"
)

var incrementalSeed = flag.Uint64("incremental.seed", 0, "replay TestIncrementalBuild with this seed (0: a fixed seed and a fresh one)")

// TestIncrementalBuild holds the bundles built change by change, from the
// translations kept, to the bundles of a full rebuild (istio.TranslateAll
// of the same resources, the user modules added) after every step of
// random changes: policies added, edited (spec or the dry-run
// annotation), made invalid, deleted and made again under a new UID;
// PeerAuthentications and RequestAuthentications likewise; user modules
// coming and going; for the mesh-wide bundle and two waypoints'.
func TestIncrementalBuild(t *testing.T) {
	seeds := []uint64{1, uint64(time.Now().UnixNano())}
	if *incrementalSeed != 0 {
		seeds = []uint64{*incrementalSeed}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("replay with -incremental.seed %d", seed)
			testIncrementalBuild(t, rand.New(rand.NewPCG(seed, seed)))
		})
	}
}

func testIncrementalBuild(t *testing.T, rnd *rand.Rand) {
	cfg := Config{}.withDefaults()
	store := newPolicyStore(cfg.istioOptions(""))
	// ref converts every object again at every step; it keeps only the
	// last valid versions, which an invalid object's meaning depends on.
	ref := newPolicyStore(cfg.istioOptions(""))
	builds := newBundleBuilds(cfg)
	c := &cluster{rnd: rnd, aps: map[string]*clientv1.AuthorizationPolicy{}, pas: map[string]*clientv1.PeerAuthentication{},
		ras: map[string]*clientv1.RequestAuthentication{}, user: map[string]string{}}
	refs := []string{"bank/waypoint", "istio-system/everywhere"}
	for step := range 60 {
		for range 1 + rnd.IntN(8) {
			c.change()
		}
		res, problems := store.resources(c.objects())
		clear(ref.apsSeen)
		clear(ref.pasSeen)
		clear(ref.rasSeen)
		refRes, refProblems := ref.resources(c.objects())
		if got, want := fmt.Sprint(problems), fmt.Sprint(refProblems); got != want {
			t.Fatalf("step %d: problems %s; want %s", step, got, want)
		}
		for _, ref := range append([]string{""}, refs...) {
			tr := builds.mesh
			if ref != "" {
				tr = builds.waypoint(ref)
			}
			got, err := tr.build(res, c.user)
			if err != nil {
				t.Fatalf("step %d, bundle %q: %v", step, ref, err)
			}
			want := fullBuild(t, refRes, c.user, cfg.istioOptions(ref))
			if got.Revision != want.Revision || !bytes.Equal(got.Archive, want.Archive) ||
				!maps.Equal(got.Translation.Modules, want.Translation.Modules) || !slices.Equal(got.Translation.Warnings, want.Translation.Warnings) {
				t.Fatalf("step %d, bundle %q: incremental build differs from a full one:\nmodules %v\nwant    %v\nwarnings %v\nwant     %v",
					step, ref, slices.Sorted(maps.Keys(got.Translation.Modules)), slices.Sorted(maps.Keys(want.Translation.Modules)),
					got.Translation.Warnings, want.Translation.Warnings)
			}
			if len(c.user) == 0 {
				// Istio resources alone: the files istio's writer writes.
				var buf bytes.Buffer
				if err := want.Translation.WriteBundleTarGz(&buf); err != nil {
					t.Fatal(err)
				}
				if g, w := untar(t, got.Archive), untar(t, buf.Bytes()); !maps.EqualFunc(g, w, bytes.Equal) {
					t.Fatalf("step %d, bundle %q: archive holds %v; istio's WriteBundleTarGz %v", step, ref, slices.Sorted(maps.Keys(g)), slices.Sorted(maps.Keys(w)))
				}
			}
		}
		if got, want := builds.mesh.warnings(), policyWarnings(t, refRes.AuthorizationPolicies, cfg.istioOptions("")); !maps.EqualFunc(got, want, slices.Equal) {
			t.Fatalf("step %d: warnings by policy %v; want %v", step, got, want)
		}
	}
}

// untar is a .tar.gz's files by name, in order, each named once.
func untar(t *testing.T, archive []byte) map[string][]byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[hdr.Name]; dup {
			t.Fatalf("%s twice in the archive", hdr.Name)
		}
		out[hdr.Name] = data
	}
}

// fullBuild is the bundle of translating everything again.
func fullBuild(t *testing.T, res *istio.Resources, user map[string]string, opts istio.Options) *Bundle {
	t.Helper()
	tr, err := istio.TranslateAll(res, opts)
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(tr.Modules, user)
	b, err := newBundle(tr, &tarEntries{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// policyWarnings are the AuthorizationPolicies' warnings of one
// translation of them all, by policy.
func policyWarnings(t *testing.T, aps []*istio.Policy, opts istio.Options) map[string][]istio.Warning {
	tr, err := istio.Translate(aps, opts)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]istio.Warning{}
	for _, w := range tr.Warnings {
		out[w.Policy] = append(out[w.Policy], w)
	}
	return out
}

// cluster is the security objects of a cluster changing at random, as
// the API server would version them.
type cluster struct {
	rnd  *rand.Rand
	uid  int
	aps  map[string]*clientv1.AuthorizationPolicy
	pas  map[string]*clientv1.PeerAuthentication
	ras  map[string]*clientv1.RequestAuthentication
	user map[string]string
}

var namespaces = []string{"bank", "shop", "istio-system"}

func (c *cluster) objects() policyObjects {
	return policyObjects{aps: slices.Collect(maps.Values(c.aps)), pas: slices.Collect(maps.Values(c.pas)), ras: slices.Collect(maps.Values(c.ras))}
}

// meta is an object's metadata after a change: a new UID when it is new,
// else the next generation.
func (c *cluster) meta(old *metav1.ObjectMeta, ns, name string) metav1.ObjectMeta {
	if old == nil || c.rnd.IntN(10) == 0 { // deleted and made again
		c.uid++
		return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprint(c.uid)), Generation: 1}
	}
	m := *old.DeepCopy()
	m.Generation++
	return m
}

func (c *cluster) change() {
	ns := namespaces[c.rnd.IntN(len(namespaces))]
	switch k := c.rnd.IntN(20); {
	case k < 13:
		name := fmt.Sprintf("ap-%d", c.rnd.IntN(12))
		old := c.aps[ns+"/"+name]
		if old != nil && c.rnd.IntN(5) == 0 {
			delete(c.aps, ns+"/"+name)
			return
		}
		if old != nil && c.rnd.IntN(4) == 0 { // only the dry-run annotation moves
			ap := old.DeepCopy()
			ap.Annotations = map[string]string{"istio.io/dry-run": fmt.Sprint(old.Annotations["istio.io/dry-run"] != "true")}
			c.aps[ns+"/"+name] = ap
			return
		}
		var m *metav1.ObjectMeta
		if old != nil {
			m = &old.ObjectMeta
		}
		ap := &clientv1.AuthorizationPolicy{ObjectMeta: c.meta(m, ns, name)}
		c.policySpec().DeepCopyInto(&ap.Spec)
		c.aps[ns+"/"+name] = ap
	case k < 16:
		name := fmt.Sprintf("pa-%d", c.rnd.IntN(3))
		old := c.pas[ns+"/"+name]
		if old != nil && c.rnd.IntN(4) == 0 {
			delete(c.pas, ns+"/"+name)
			return
		}
		var m *metav1.ObjectMeta
		if old != nil {
			m = &old.ObjectMeta
		}
		modes := []securityv1beta1.PeerAuthentication_MutualTLS_Mode{securityv1beta1.PeerAuthentication_MutualTLS_STRICT,
			securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, securityv1beta1.PeerAuthentication_MutualTLS_DISABLE}
		pa := &clientv1.PeerAuthentication{ObjectMeta: c.meta(m, ns, name), Spec: securityv1beta1.PeerAuthentication{
			Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{Mode: modes[c.rnd.IntN(len(modes))]}}}
		if c.rnd.IntN(2) == 0 {
			pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprint("app-", c.rnd.IntN(3))}}
		}
		c.pas[ns+"/"+name] = pa
	case k < 17:
		name := fmt.Sprintf("ra-%d", c.rnd.IntN(2))
		if c.ras[ns+"/"+name] != nil && c.rnd.IntN(2) == 0 {
			delete(c.ras, ns+"/"+name)
			return
		}
		var m *metav1.ObjectMeta
		if old := c.ras[ns+"/"+name]; old != nil {
			m = &old.ObjectMeta
		}
		c.ras[ns+"/"+name] = &clientv1.RequestAuthentication{ObjectMeta: c.meta(m, ns, name), Spec: securityv1beta1.RequestAuthentication{
			JwtRules: []*securityv1beta1.JWTRule{{Issuer: fmt.Sprintf("https://issuer-%d.test", c.rnd.IntN(3)), JwksUri: "https://issuer.test/jwks"}}}}
	default:
		file := fmt.Sprintf("mesh/policies/%s/cm-%d/deny.rego", ns, c.rnd.IntN(3))
		if _, ok := c.user[file]; ok && c.rnd.IntN(2) == 0 {
			delete(c.user, file)
			return
		}
		c.user[file] = fmt.Sprintf("package mesh.policies[%q].cm\n\ndeny if input.destination.port == %d\n", ns, c.rnd.IntN(100))
	}
}

// policySpec is a random AuthorizationPolicy: any action, a selector or
// targetRefs or neither, L4 and L7 conditions (warnings at L4), now and
// then an invalid port.
func (c *cluster) policySpec() *securityv1beta1.AuthorizationPolicy {
	actions := []securityv1beta1.AuthorizationPolicy_Action{securityv1beta1.AuthorizationPolicy_ALLOW,
		securityv1beta1.AuthorizationPolicy_DENY, securityv1beta1.AuthorizationPolicy_AUDIT}
	s := &securityv1beta1.AuthorizationPolicy{Action: actions[c.rnd.IntN(len(actions))]}
	switch c.rnd.IntN(4) {
	case 0:
		s.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprint("app-", c.rnd.IntN(3))}}
	case 1:
		refs := []*typev1beta1.PolicyTargetReference{
			{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"},
			{Kind: "Service", Name: fmt.Sprint("svc-", c.rnd.IntN(3))},
			{Group: "gateway.networking.k8s.io", Kind: "GatewayClass", Name: "istio-waypoint"},
		}
		s.TargetRefs = []*typev1beta1.PolicyTargetReference{refs[c.rnd.IntN(len(refs))]}
	}
	for range c.rnd.IntN(3) {
		r := &securityv1beta1.Rule{}
		if c.rnd.IntN(2) == 0 {
			r.From = []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{fmt.Sprintf("cluster.local/ns/shop/sa/client-%d", c.rnd.IntN(5))}}}}
		}
		op := &securityv1beta1.Operation{}
		switch c.rnd.IntN(4) {
		case 0:
			op.Ports = []string{fmt.Sprint(8000 + c.rnd.IntN(5))}
		case 1:
			op.Methods = []string{"GET"}
			op.Paths = []string{"/api/*"}
		case 2:
			if c.rnd.IntN(3) == 0 {
				op.Ports = []string{"not-a-port"} // invalid: its last valid version stays
			}
		}
		r.To = []*securityv1beta1.Rule_To{{Operation: op}}
		s.Rules = append(s.Rules, r)
	}
	return s
}
