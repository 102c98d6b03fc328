package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel"
)

// An Istio user's AuthorizationPolicies, unchanged: translated to Rego and
// enforced by the ztunnels.
const shopPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-frontend-only
  namespace: shop
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["regomesh.test/ns/shop/sa/frontend"]
    to:
    - operation:
        ports: ["8080"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-legacy-namespace
  namespace: istio-system
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]
`

func TestAuthorizationPolicyEnforced(t *testing.T) {
	policies, _, err := istio.Decode(strings.NewReader(shopPolicies), "shop.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := istio.Translate(policies, istio.Options{TrustDomain: "regomesh.test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := tr.WriteBundleDir(dir); err != nil {
		t.Fatal(err)
	}
	m := startMesh(t, []string{dir}, false)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	target := fmt.Sprintf("%s:8080", api.IP)

	c, err := dialFrom(t, m.Pods["frontend"], target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "istio"); err != nil || got != "istio" {
		t.Fatalf("frontend -> api: %q, %v", got, err)
	}
	c.Close() // the access log line is written when the connection ends
	allowed := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "allow"
	})
	if allowed.Policy != "shop/api-frontend-only" || allowed.Rule != "0" {
		t.Errorf("allowed by %s rule %s", allowed.Policy, allowed.Rule)
	}
	m.refused(t, m.Pods["intruder"], "spiffe://regomesh.test/ns/shop/sa/intruder", target)
	m.refused(t, m.Pods["legacy"], "", target)
	plaintext := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "inbound" && e.SourceID == "" && e.Decision == "deny"
	})
	if plaintext.Policy != "istio-system/deny-legacy-namespace" || plaintext.Reason != "denied by DENY policy" {
		t.Errorf("plaintext denied by %q (%s)", plaintext.Policy, plaintext.Reason)
	}
}
