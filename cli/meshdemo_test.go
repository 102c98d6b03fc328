package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMeshDemo runs `regomesh demo --once` on a real mesh (root: network
// namespaces; SPIRE from bin/) and checks every line of its two tables:
// the L4 calls the ztunnels decide and the HTTP requests the waypoint
// decides, each with the rule that decided.
func TestMeshDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the mesh demo needs root (network namespaces, nftables); CI runs it as root")
	}
	t.Setenv("TMPDIR", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := meshDemo(ctx, &out, demoConfig{Examples: filepath.Join("..", "examples"), Once: true}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	// Each want is one table row, its cells separated by runs of spaces.
	// frontend /admin is left out: the change window makes it depend on
	// the hour.
	for _, want := range [][]string{
		{"frontend", "api:8080", "allowed", "-", "no ALLOW policy selects the destination"},
		{"api", "postgres:5432", "allowed", "examples/db api-only", "allowed by ALLOW policy"},
		{"frontend", "postgres:5432", "DENIED", "examples/db (no rule matched)"},
		{"checkout", "postgres:5432", "DENIED", "examples/db (no rule matched)"},
		{"api", "postgres:5433", "DENIED", "examples/db (no rule matched)"},
		{"legacy (plaintext)", "postgres:5432", "DENIED", "examples/db (no rule matched)"},
		{"frontend", "api:15001", "DENIED", "-", "LOOP: "},
		{"frontend", "GET /catalog/42", "200", "-", "shop/api#1", "no ALLOW policy selects the destination"},
		{"checkout", "GET /catalog/42", "200", "-", "shop/api#1"},
		{"checkout", "GET /admin/users", "403", "examples/admin admin-only-frontend", "-", "only the frontend may call /admin"},
		{"checkout", "GET /catalog/../admin/users", "403", "examples/admin admin-only-frontend"},
		{"frontend", "GET /v1/catalog/42", "200", "-", "shop/api#0"},
		{"checkout", "POST /orders", "403", "examples/orders orders-need-a-user", "-", "POST /orders needs a signed-in user"},
		{"checkout", "POST /orders (JWT: alice)", "200", "-", "shop/api#2"},
		{"checkout", "POST /orders (JWT: expired)", "401", "-", "-", "JWT refused: Jwt is expired"},
	} {
		cells := make([]string, len(want))
		for i, c := range want {
			cells[i] = regexp.QuoteMeta(c)
		}
		row := regexp.MustCompile(`(?m)^` + strings.Join(cells, ` {2,}`))
		if !row.MatchString(out.String()) {
			t.Errorf("no row %q in the demo's output:\n%s", want, out.String())
		}
	}
	// The explain command for a denied request names the rule.
	cmd := regexp.MustCompile(`and a request: +go run \./cmd/regomesh policy explain --bundle (\S+) -i (\S+)`).FindStringSubmatch(out.String())
	if cmd == nil {
		t.Fatalf("no explain command for a request in the demo's output:\n%s", out.String())
	}
	var explained bytes.Buffer
	code := Run([]string{"policy", "explain", "--bundle", cmd[1], "-i", cmd[2]}, &explained, &explained)
	if code != ExitDenied || !strings.Contains(explained.String(), "admin-only-frontend") {
		t.Errorf("policy explain of the denied request: exit %d\n%s\nwant a deny naming admin-only-frontend", code, explained.String())
	}

	// The canary split: every request answered, by both versions.
	split := regexp.MustCompile(`(?m)^Weighted split of /catalog .*: (\d+) requests, (\d+) to api, (\d+) to api-v2$`).FindStringSubmatch(out.String())
	if split == nil {
		t.Fatalf("no weighted split line in the demo's output:\n%s", out.String())
	}
	total, api, v2 := atoi(t, split[1]), atoi(t, split[2]), atoi(t, split[3])
	if api+v2 != total || api == 0 || v2 == 0 {
		t.Errorf("split %s: want all %d answered, by both versions (a quarter to api-v2: none at all has odds 0.75^40)", split[0], total)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
