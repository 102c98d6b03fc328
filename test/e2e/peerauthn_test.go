package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel"
)

// strictShop switches plaintext off in namespace shop, as an Istio user
// does; the legacy pod, outside the mesh, only speaks plaintext.
const strictShop = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: shop
spec:
  mtls:
    mode: STRICT
`

// apiPermissive lets the api take plaintext again, on every port.
const apiPermissive = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: api-plaintext
  namespace: shop
spec:
  selector:
    matchLabels:
      app: api
  mtls:
    mode: PERMISSIVE
`

// TestPeerAuthenticationStrict: a STRICT namespace refuses the legacy
// pod's plaintext on 15006, and says STRICT mTLS in the access log, while
// mesh pods still connect; a PERMISSIVE workload-level policy loaded
// afterwards lets the plaintext through.
func TestPeerAuthenticationStrict(t *testing.T) {
	m := startMesh(t, []string{peerBundle(t, strictShop)}, false)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)

	echoesFrom(t, m, "frontend", target)
	refused := m.refused(t, m.Pods["legacy"], "", target)
	if refused.Policy != "shop/strict" || refused.Rule != "mtls" ||
		refused.Reason != "STRICT mTLS: plaintext refused by PeerAuthentication shop/strict" {
		t.Errorf("plaintext refused by %q rule %q (%s), want shop/strict's STRICT mTLS", refused.Policy, refused.Rule, refused.Reason)
	}

	permissive := peerBundle(t, strictShop+"---"+apiPermissive)
	for node, engine := range m.Engines {
		if err := (policy.BundleFiles{Paths: []string{permissive}}).Load(context.Background(), engine); err != nil {
			t.Fatalf("%s: %v", node, err)
		}
	}
	echoesFrom(t, m, "legacy", target)
	m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "inbound" && e.SourceID == "" && e.Decision == "allow" && strings.HasPrefix(e.Source, m.Pods["legacy"].IP.String()+":")
	})
	echoesFrom(t, m, "frontend", target)
}

// echoesFrom checks that pod name reaches the echo server at target.
func echoesFrom(t *testing.T, m *mesh, name, target string) {
	t.Helper()
	c, err := dialFrom(t, m.Pods[name], target)
	if err != nil {
		t.Fatalf("%s -> %s: %v", name, target, err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "peer"); err != nil || got != "peer" {
		t.Fatalf("%s -> %s: %q, %v", name, target, got, err)
	}
}

// peerBundle translates Istio YAML into a bundle directory.
func peerBundle(t *testing.T, src string) string {
	t.Helper()
	res, _, err := istio.DecodeAll(strings.NewReader(src), "peerauthentication.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := istio.TranslateAll(res, istio.Options{TrustDomain: "regomesh.test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}
