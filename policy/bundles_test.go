package policy

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBundlesStamp(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{"p.rego": "package mesh.policies.a.b\n"})
	first := BundlesStamp([]string{dir})
	if first == "" || BundlesStamp([]string{dir}) != first {
		t.Fatalf("stamp %q is empty or unstable", first)
	}
	file := filepath.Join(dir, "p.rego")
	os.WriteFile(file, []byte("package mesh.policies.a.b\n\n# edited\n"), 0o644)
	os.Chtimes(file, time.Now().Add(time.Second), time.Now().Add(time.Second))
	if BundlesStamp([]string{dir}) == first {
		t.Error("an edited file left the stamp unchanged")
	}
}

func TestReadBundlesStopsAtTheFirstFailure(t *testing.T) {
	if _, err := ReadBundles([]string{shopBundle, "testdata/engine/absent"}, nil); err == nil {
		t.Error("a missing bundle must fail the set")
	}
	bundles, err := ReadBundles([]string{shopBundle, shopV2Bundle}, nil)
	if err != nil || len(bundles) != 2 || bundles[1].Revision != "shop-2" {
		t.Errorf("ReadBundles = %v, %v", bundles, err)
	}
}
