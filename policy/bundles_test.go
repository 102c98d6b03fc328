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

// A file rewritten with the same size and time (within the clock's
// granularity) leaves the names, times and sizes unchanged: the stamp
// changes once more when the files have settled, so a watcher that read
// between the two writes reads the bundle again.
func TestBundlesStampChangesOnceSettled(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{"p.rego": "package mesh.policies.a.b\n\n# port 7\n"})
	file := filepath.Join(dir, "p.rego")
	written := time.Now()
	os.Chtimes(file, written, written)
	read := bundlesStamp([]string{dir}, written.Add(time.Millisecond)) // a watcher reads the first version
	os.WriteFile(file, []byte("package mesh.policies.a.b\n\n# port 8\n"), 0o644)
	os.Chtimes(file, written, written) // the same time: the clock did not tick
	if again := bundlesStamp([]string{dir}, written.Add(2*time.Millisecond)); again != read {
		t.Fatalf("the setup is wrong: the rewrite changed the stamp (%q, %q)", read, again)
	}
	settled := bundlesStamp([]string{dir}, written.Add(settleTime))
	if settled == read {
		t.Error("the stamp did not change once the files settled: a watcher keeps the first version")
	}
	if bundlesStamp([]string{dir}, written.Add(time.Hour)) != settled {
		t.Error("a settled stamp changes again")
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
