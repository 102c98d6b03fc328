package istio_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

const bundlePolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  selector:
    matchLabels: {app: web}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]
`

func TestBundleManifest(t *testing.T) {
	tr, err := translateYAML(t, "b.yaml", bundlePolicies, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ".manifest"))
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Revision string   `json:"revision"`
		Roots    []string `json:"roots"`
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	if manifest.Revision != tr.Revision() || len(manifest.Revision) != 64 || strings.Join(manifest.Roots, ",") != istio.Root {
		t.Errorf("manifest %s", raw)
	}
	again, _ := translateYAML(t, "other-name.yaml", bundlePolicies, istio.Options{})
	if again.Revision() == tr.Revision() {
		t.Errorf("the revision ignores the modules' content (their Source line differs)")
	}
	same, _ := translateYAML(t, "b.yaml", bundlePolicies, istio.Options{})
	if same.Revision() != tr.Revision() {
		t.Errorf("the revision is not deterministic")
	}
}

// TestBundleTarGz reads the archive form with the engine.
func TestBundleTarGz(t *testing.T) {
	tr, err := translateYAML(t, "b.yaml", bundlePolicies, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tr.WriteBundleTarGz(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "istio.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := policy.ReadBundle(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Revision != tr.Revision() {
		t.Errorf("revision %q, want %q", b.Revision, tr.Revision())
	}
	e := newEngine(t, policy.Config{Logger: quietLogger()}, []*policy.Bundle{b})
	d, err := e.Decide(context.Background(), policy.Input{Layer: policy.L4, Destination: policy.Destination{Namespace: "shop"}})
	if err != nil || d.Allow || d.Policy != "istio-system/require-mtls" {
		t.Errorf("decision %+v %v", d, err)
	}
}

// TestOPACLI checks the stock opa CLI (make tools builds bin/opa) loads
// both bundle forms and decides as the engine does.
func TestOPACLI(t *testing.T) {
	opa, err := filepath.Abs("../../bin/opa")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(opa); err != nil {
		t.Skip("bin/opa not built (make tools)")
	}
	tr, err := translateYAML(t, "b.yaml", bundlePolicies, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tr.WriteBundleTarGz(&buf); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "istio.tar.gz")
	if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	input := filepath.Join(t.TempDir(), "input.json")
	in := `{"layer": "l4", "source": {"principal": "spiffe://cluster.local/ns/shop/sa/api"}, "destination": {"namespace": "shop", "labels": {"app": "web"}}}`
	if err := os.WriteFile(input, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{dir, archive} {
		cmd := exec.Command(opa, "eval", "--format", "json", "--bundle", b,
			"--data", "../../rego/mesh/authz/authz.rego", "--data", "../../rego/mesh/authz/match.rego",
			"--input", input, "data.mesh.authz.decision.reason")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("opa eval --bundle %s: %v\n%s", b, err, out)
		}
		want := `"no ALLOW policy matched; selecting the destination: shop/frontend-only"`
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("opa eval --bundle %s:\n%s\nwant %s", b, out, want)
		}
		check := exec.Command(opa, "check", "--strict", "--bundle", b)
		if out, err := check.CombinedOutput(); err != nil {
			t.Errorf("opa check --strict --bundle %s: %v\n%s", b, err, out)
		}
	}
}

// TestBundleTarGzStream holds the archive to the tar stream one
// archive/tar writer makes of the bundle directory's files (.manifest,
// then the modules by name), a name too long for a plain tar header
// among them, whatever the order the records were made in.
func TestBundleTarGzStream(t *testing.T) {
	long := strings.Repeat("a-very-long-policy-name-", 5) + "x"
	tr, err := translateYAML(t, "b.yaml", bundlePolicies+"---\n"+policyDoc(long, "action: DENY\nrules: [{}]"), istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := tr.WriteBundleTarGz(&archive); err != nil {
		t.Fatal(err)
	}
	gz, err := gzip.NewReader(&archive)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	tw := tar.NewWriter(&want)
	for _, name := range append([]string{".manifest"}, slices.Sorted(maps.Keys(tr.Modules))...) {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: "/" + name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if len(istio.Root+"/default/"+long+".rego") < 101 {
		t.Fatalf("the long name is not too long for a tar header")
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("the archive's tar stream (%d bytes) differs from archive/tar's (%d bytes)", len(got), want.Len())
	}
}
