package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/controller/kubeharness"
)

// TestKubernetesDemo runs `regomesh demo --kubernetes --once` (root:
// network namespaces; SPIRE, kube-apiserver and etcd from make spire and
// make kube) and checks every row of its table: the calls the ztunnels
// decide with examples/istio's AuthorizationPolicies, applied through the
// API server and served by the controller, each with the policy that
// decided; the HTTP requests through the waypoint streaming from the
// controller, routed and their JWTs checked (no policy of examples/istio
// targets its Gateway); and that both ztunnels ACKed the bundle the
// controller serves, and the waypoint the state.
func TestKubernetesDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the mesh demo needs root (network namespaces, nftables); CI runs it as root")
	}
	if testing.Short() {
		t.Skip("builds the ztunnel binary, runs kube-apiserver, etcd and SPIRE")
	}
	t.Setenv("TMPDIR", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := kubeDemo(ctx, &out, demoConfig{Examples: filepath.Join("..", "examples"), Once: true, Kubernetes: true})
	if errors.Is(err, kubeharness.ErrNoBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range [][]string{
		{"frontend", "api:8080", "allowed", "-", "no ALLOW policy selects the destination"},
		{"api", "postgres:5432", "allowed", "shop/postgres-api-only 0", "allowed by ALLOW policy"},
		{"frontend", "postgres:5432", "DENIED", "shop/postgres-api-only (no rule matched)"},
		{"checkout", "postgres:5432", "DENIED", "shop/postgres-api-only (no rule matched)"},
		{"api", "postgres:5433", "DENIED", "shop/postgres-api-only (no rule matched)"},
		{"legacy (plaintext)", "postgres:5432", "DENIED", "shop/postgres-api-only (no rule matched)"},
		{"frontend", "api:15001", "DENIED", "-", "LOOP: "},
		{"frontend", "GET /catalog/42", "200", "-", "shop/api#1", "no ALLOW policy selects the destination"},
		{"frontend", "GET /v1/catalog/42", "200", "-", "shop/api#0"},
		{"checkout", "POST /orders (JWT: alice)", "200", "-", "shop/api#2"},
		{"checkout", "POST /orders (JWT: expired)", "401", "-", "-", "JWT refused: Jwt is expired"},
	} {
		if !hasRow(out.String(), want) {
			t.Errorf("no row %q in the demo's output:\n%s", want, out.String())
		}
	}
	bundle := regexp.MustCompile(`The controller's proxies \(state version (\d+), bundle (\S+)\):`).FindStringSubmatch(out.String())
	if bundle == nil {
		t.Fatalf("no proxies table in the demo's output:\n%s", out.String())
	}
	for _, node := range []string{"node-1", "node-2"} {
		if !hasRow(out.String(), []string{"spiffe://cluster.local/regomesh/ztunnel/" + node, node, bundle[1], bundle[2]}) {
			t.Errorf("%s's ztunnel did not ACK state %s and bundle %s:\n%s", node, bundle[1], bundle[2], out.String())
		}
	}
	if !hasRow(out.String(), []string{"spiffe://cluster.local/ns/shop/sa/waypoint", bundle[1]}) {
		t.Errorf("the waypoint did not ACK state %s:\n%s", bundle[1], out.String())
	}
	split := regexp.MustCompile(`(?m)^Weighted split of /catalog .*: (\d+) requests, (\d+) to api, (\d+) to api-v2$`).FindStringSubmatch(out.String())
	if split == nil {
		t.Fatalf("no weighted split line in the demo's output:\n%s", out.String())
	}
	if total, api, v2 := atoi(t, split[1]), atoi(t, split[2]), atoi(t, split[3]); api+v2 != total || api == 0 || v2 == 0 {
		t.Errorf("split %s: want all %d answered, by both versions", split[0], total)
	}
}

// hasRow says whether out has a line starting with cells, separated by
// runs of two spaces or more, as tabwriter aligns them.
func hasRow(out string, cells []string) bool {
	quoted := make([]string, len(cells))
	for i, c := range cells {
		quoted[i] = regexp.QuoteMeta(c)
	}
	return regexp.MustCompile(`(?m)^` + strings.Join(quoted, ` {2,}`)).MatchString(out)
}
