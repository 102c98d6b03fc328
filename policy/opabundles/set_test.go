package opabundles

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/regomesh/regomesh/policy"
)

// TestLongPolling: with polling an hour apart, only a long poll can bring
// a new revision within the test: the downloader asks with "Prefer:
// wait=N" and the If-None-Match of the copy in force, the server holds the
// request, and the revision published meanwhile is activated.
func TestLongPolling(t *testing.T) {
	srv := newBundleServer(t, true).start(t)
	srv.publish(denyPort{"remote", "r1", 1}.tarball(t, nil, ""))
	h := startSet(t, fmt.Sprintf(`
services:
  - name: bundles
    url: %s
bundles:
  authz:
    resource: /bundles/authz
    polling:
      min_delay_seconds: 3600
      max_delay_seconds: 3600
      long_polling_timeout_seconds: 300
`, srv.URL), Options{})
	h.waitRevision(t, "authz", "r1")
	waitFor(t, "the second request, a long poll, is held", func() bool { return srv.arrivals() == 2 && len(srv.seen()) == 1 })
	srv.publish(denyPort{"remote", "r2", 2}.tarball(t, nil, ""))
	h.waitRevision(t, "authz", "r2")
	h.wantDecisions(t, map[int]string{1: "", 2: "remote/p"})
	seen := srv.seen()
	if len(seen) != 2 {
		t.Fatalf("%d requests, want 2 (the first download, and a long poll answered by the new revision): %+v", len(seen), seen)
	}
	if r := seen[1]; r.ifNoneMatch != `"v1"` || !strings.Contains(r.prefer, "wait=300") || r.status != 200 {
		t.Errorf("the long poll carried If-None-Match %q, Prefer %q and got %d; want \"v1\", wait=300 and 200", r.ifNoneMatch, r.prefer, r.status)
	}
}

// TestFailuresKeepTheLastGoodSet: an error status, a download that is not
// a bundle, and bundles the engine refuses each count as a failure with
// its reason and leave the revision in force and its decisions; the next
// good revision is activated.
func TestFailuresKeepTheLastGoodSet(t *testing.T) {
	srv := newBundleServer(t, false).start(t)
	srv.publish(denyPort{"remote", "r1", 1}.tarball(t, nil, ""))
	h := startSet(t, fmt.Sprintf(`
services:
  bundles: {url: %s}
bundles:
  authz:
    polling: {min_delay_seconds: 1, max_delay_seconds: 1}
`, srv.URL), Options{})
	h.waitRevision(t, "authz", "r1")
	generation := h.engine.Generation()
	roots := []string{"mesh/policies/remote"}
	for _, tc := range []struct {
		name   string
		serve  func()
		reason string
	}{
		{"server error", func() { srv.failWith(http.StatusInternalServerError) }, reasonDownload},
		{"not a bundle", func() { srv.failWith(0); srv.publish([]byte("not a tarball")) }, reasonBundle},
		{"Rego that does not parse", func() {
			srv.publish(writeBundle(t, bundle.Bundle{Manifest: bundle.Manifest{Revision: "bad-syntax", Roots: &roots}, Data: map[string]any{},
				Modules: []bundle.ModuleFile{{URL: "/p.rego", Path: "/p.rego", Raw: []byte("package mesh.policies.remote.p\n\ndeny contains if {\n")}}}, nil, ""))
		}, reasonBundle},
		{"Rego that does not compile", func() {
			srv.publish(writeBundle(t, bundle.Bundle{Manifest: bundle.Manifest{Revision: "bad-rego", Roots: &roots}, Data: map[string]any{},
				Modules: []bundle.ModuleFile{parsedModule(t, "/p.rego", "package mesh.policies.remote.p\n\ndeny contains x if x := no_such_function(1)\n")}}, nil, ""))
		}, reasonActivation},
		{"takes over the library's root", func() {
			libraryRoots := []string{"mesh/authz"}
			srv.publish(writeBundle(t, bundle.Bundle{Manifest: bundle.Manifest{Revision: "bad-roots", Roots: &libraryRoots}, Data: map[string]any{},
				Modules: []bundle.ModuleFile{parsedModule(t, "/p.rego", "package mesh.authz.mine\n\nx := 1\n")}}, nil, ""))
		}, reasonActivation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.failures("authz", tc.reason)
			tc.serve()
			h.waitFailures(t, "authz", tc.reason, before+1)
			if got, g := h.revision("authz"), h.engine.Generation(); got != "r1" || g != generation {
				t.Errorf("revision %q generation %d, want r1 and %d", got, g, generation)
			}
			h.wantDecisions(t, map[int]string{1: "remote/p", 2: ""})
		})
	}
	srv.publish(denyPort{"remote", "r2", 2}.tarball(t, nil, ""))
	h.waitRevision(t, "authz", "r2")
	h.wantDecisions(t, map[int]string{1: "", 2: "remote/p"})
}

// TestReadyOnceEveryBundleActivated: two bundles from two services and a
// local --bundle. Until both remote bundles have arrived nothing is loaded:
// not ready, every decision denies. Once they have, the set decides with
// all three. A bad revision of one bundle leaves its good copy in force
// while the other's new revisions and local changes still apply.
func TestReadyOnceEveryBundleActivated(t *testing.T) {
	key := newRSAKeys(t)
	srvA, srvB := newBundleServer(t, false).start(t), newBundleServer(t, false).start(t)
	srvA.publish(denyPort{"a", "a1", 1}.tarball(t, &key, "team"))
	local := filepath.Join(t.TempDir(), "local")
	writeLocalBundle(t, local, denyPort{"local", "l1", 7})
	h := startSet(t, fmt.Sprintf(`
services:
  a: {url: %s}
  b: {url: %s}
keys:
  team:
    key: |
%s
bundles:
  a:
    service: a
    signing: {keyid: team}
    polling: {min_delay_seconds: 1, max_delay_seconds: 1}
  b:
    service: b
    signing: {keyid: team}
    polling: {min_delay_seconds: 1, max_delay_seconds: 1}
`, srvA.URL, srvB.URL, indent(key.public, "      ")), Options{Local: policy.BundleFiles{Paths: []string{local}}, LocalPoll: 20 * time.Millisecond})

	// a arrived (its second request follows its first's handling), b is
	// missing: nothing loaded, every decision denies.
	waitFor(t, "a downloaded, b failed twice", func() bool {
		return len(srvA.seen()) >= 2 && h.failures("b", reasonDownload) >= 2
	})
	err := h.set.Ready()
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "bundle b (server replied with Not Found)") || strings.Contains(err.Error(), "bundle a") {
		t.Errorf("Ready() = %v, want ErrNotReady naming b only", err)
	}
	if g := h.engine.Generation(); g != 0 {
		t.Errorf("generation %d before every bundle arrived, want 0 (nothing loaded)", g)
	}
	for _, port := range []int{1, 7, 9} {
		if d := h.decide(t, port); d.Allow || d.Reason != policy.ReasonNoPolicy {
			t.Errorf("port %d before ready: allow=%t reason %q, want a deny: %s", port, d.Allow, d.Reason, policy.ReasonNoPolicy)
		}
	}

	// b arrives: ready, deciding with a, b and the local bundle.
	srvB.publish(denyPort{"b", "b1", 2}.tarball(t, &key, "team"))
	waitFor(t, "ready", func() bool { return h.set.Ready() == nil })
	if want := map[string]string{"a": "a1", "b": "b1", local: "l1"}; !equalMaps(h.engine.Revisions(), want) {
		t.Errorf("revisions %v, want %v", h.engine.Revisions(), want)
	}
	h.wantDecisions(t, map[int]string{1: "a/p", 2: "b/p", 7: "local/p", 9: ""})

	// b's next revision is signed with another key: rejected. a's next
	// revision still applies, with b's good copy.
	other := newRSAKeys(t)
	srvB.publish(denyPort{"b", "b2", 3}.tarball(t, &other, "team"))
	h.waitFailures(t, "b", reasonBundle, 1)
	srvA.publish(denyPort{"a", "a2", 4}.tarball(t, &key, "team"))
	h.waitRevision(t, "a", "a2")
	h.wantDecisions(t, map[int]string{1: "", 4: "a/p", 2: "b/p", 3: "", 7: "local/p"})

	// A local change applies with the remote copies in force.
	writeLocalBundle(t, local, denyPort{"local", "l2-longer", 8})
	h.waitRevision(t, local, "l2-longer")
	if want := map[string]string{"a": "a2", "b": "b1", local: "l2-longer"}; !equalMaps(h.engine.Revisions(), want) {
		t.Errorf("revisions %v, want %v", h.engine.Revisions(), want)
	}
	h.wantDecisions(t, map[int]string{4: "a/p", 2: "b/p", 7: "", 8: "local/p"})
}

// writeLocalBundle writes d as a bundle directory.
func writeLocalBundle(t *testing.T, dir string, d denyPort) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := fmt.Sprintf(`{"revision": %q, "roots": ["mesh/policies/%s"]}`, d.revision, d.owner)
	src := fmt.Sprintf("package mesh.policies.%s.p\n\ndeny contains {\"policy\": \"%s/p\", \"rule\": \"port\"} if input.destination.port == %d\n", d.owner, d.owner, d.port)
	// The module first, the manifest last: a watcher that sees the new
	// revision has the new module too (in map order, it once read the new
	// revision with the old module, and the test decided with that).
	for _, f := range []struct{ name, body string }{{"p.rego", src}, {".manifest", manifest}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSetThatNeverLoads: two bundles that both claim the same roots each
// arrive, but the set of both does not load: nothing is in force, the set
// is not ready and says why, and every decision denies. The second to
// arrive is the one rejected; when it comes back with roots of its own,
// the set loads.
func TestSetThatNeverLoads(t *testing.T) {
	srvA, srvB := newBundleServer(t, false).start(t), newBundleServer(t, false).start(t)
	srvA.publish(denyPort{"shared", "a1", 1}.tarball(t, nil, ""))
	h := startSet(t, fmt.Sprintf(`
services:
  a: {url: %s}
  b: {url: %s}
bundles:
  a: {service: a, polling: {min_delay_seconds: 1, max_delay_seconds: 1}}
  b: {service: b, polling: {min_delay_seconds: 1, max_delay_seconds: 1}}
`, srvA.URL, srvB.URL), Options{})
	waitFor(t, "a downloaded", func() bool { return len(srvA.seen()) >= 2 })
	srvB.publish(denyPort{"shared", "b1", 2}.tarball(t, nil, ""))
	h.waitFailures(t, "b", reasonActivation, 1)
	err := h.set.Ready()
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "bundle b (") || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("Ready() = %v, want ErrNotReady naming b and the overlapping roots", err)
	}
	if g := h.engine.Generation(); g != 0 {
		t.Errorf("generation %d, want 0: nothing loaded", g)
	}
	if d := h.decide(t, 9); d.Allow || d.Reason != policy.ReasonNoPolicy {
		t.Errorf("decision before a set loaded: %+v, want a deny: %s", d, policy.ReasonNoPolicy)
	}
	srvB.publish(denyPort{"b", "b2", 2}.tarball(t, nil, ""))
	waitFor(t, "ready", func() bool { return h.set.Ready() == nil })
	h.wantDecisions(t, map[int]string{1: "shared/p", 2: "b/p", 9: ""})
}
