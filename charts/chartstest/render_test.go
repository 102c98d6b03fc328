package chartstest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// namespace is where the charts are installed, the one the controller's
// default identity names.
const namespace = "regomesh-system"

// kubeVersion is what renders assume: the Kubernetes minor client-go is.
var kubeVersion = &chartutil.KubeVersion{Version: "v1.37.0", Major: "1", Minor: "37"}

// valueSets are the documented shapes of the regomesh chart's values:
// testdata/<name>.yaml; "defaults" is values.yaml alone.
var valueSets = []string{"defaults", "custom", "waypoints", "ha"}

// values reads testdata/<name>.yaml (none for "defaults").
func values(t testing.TB, name string) map[string]any {
	t.Helper()
	if name == "defaults" {
		return map[string]any{}
	}
	b, err := os.ReadFile(filepath.Join("testdata", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("testdata/%s.yaml: %v", name, err)
	}
	return v
}

// render installs chart with vals as `helm template` does (dry run, no
// cluster) and returns the manifest, or the error.
func render(t testing.TB, chart string, vals map[string]any) (string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir(chart))
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.DryRun = true
	install.ClientOnly = true
	install.ReleaseName = "regomesh"
	install.Namespace = namespace
	install.KubeVersion = kubeVersion
	rel, err := install.Run(ch, vals)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// objects renders and decodes every object into its typed Go value
// (unstructured for kinds client-go's scheme does not know: CRDs).
func objects(t testing.TB, chart string, vals map[string]any) []runtime.Object {
	t.Helper()
	manifest, err := render(t, chart, vals)
	if err != nil {
		t.Fatalf("render %s: %v", chart, err)
	}
	return decode(t, manifest)
}

func decode(t testing.TB, manifest string) []runtime.Object {
	t.Helper()
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	var out []runtime.Object
	for _, k := range keys {
		doc := docs[k]
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if _, unknown := obj.(*runtime.Unknown); unknown || runtime.IsNotRegisteredError(err) {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("decode %s: %v\n%s", k, err, doc)
			}
			obj = u
		} else if err != nil {
			t.Fatalf("decode %s: %v\n%s", k, err, doc)
		}
		out = append(out, obj)
	}
	return out
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// find returns the objects of type T named name ("" for all of them).
func find[T runtime.Object](objs []runtime.Object, name string) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			if name == "" || nameOf(o) == name {
				out = append(out, v)
			}
		}
	}
	return out
}

func one[T runtime.Object](t testing.TB, objs []runtime.Object, name string) T {
	t.Helper()
	found := find[T](objs, name)
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d %T named %q rendered, want 1", len(found), zero, name)
	}
	return found[0]
}

func nameOf(o runtime.Object) string {
	if m, ok := o.(interface{ GetName() string }); ok {
		return m.GetName()
	}
	return ""
}

func kindName(o runtime.Object) string {
	return fmt.Sprintf("%T %s", o, nameOf(o))
}

func clientScheme() *runtime.Scheme { return scheme.Scheme }
