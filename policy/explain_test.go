package policy

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
)

func findTrace(x Explanation, policy, point, rule string) *RuleTrace {
	for i := range x.Rules {
		r := &x.Rules[i]
		if r.Policy == policy && r.Point == point && r.Rule == rule {
			return r
		}
	}
	return nil
}

func TestExplain(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	x, err := e.Explain(context.Background(), toAdmin("spiffe://td/ns/shop/sa/checkout"))
	if err != nil {
		t.Fatal(err)
	}
	if x.Decision.Allow || x.Decision.Policy != "shop/admin" {
		t.Fatalf("decision = %+v", x.Decision)
	}
	cases := []struct {
		name, policy, point, rule string
		matched                   bool
		failedText                string
		undefined                 bool
	}{
		{"the deny that decided", "shop/admin", "deny", "0", true, "", false},
		{"a deny on the source network", "shop/admin", "deny", "1", false, `net.cidr_contains("192.0.2.0/24", input.source.ip)`, false},
		{"an allow for another workload", "shop/db", "allow", "api-only", false, `input.destination.labels.app == "postgres"`, false},
		{"scope of the db policy", "shop/db", "allow_scope", "", false, `input.destination.labels.app == "postgres"`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := findTrace(x, tc.policy, tc.point, tc.rule)
			if r == nil {
				t.Fatalf("no trace for %s %s %s in %+v", tc.policy, tc.point, tc.rule, x.Rules)
			}
			if r.Matched != tc.matched || !strings.Contains(r.Location, "testdata/engine/shop/mesh/policies/shop/") {
				t.Errorf("trace = %+v", r)
			}
			if tc.failedText == "" {
				if r.Failed != nil {
					t.Errorf("matched rule has a failed condition: %+v", r.Failed)
				}
				return
			}
			if r.Failed == nil || r.Failed.Text != tc.failedText || r.Failed.Undefined != tc.undefined {
				t.Fatalf("failed = %+v, want %q", r.Failed, tc.failedText)
			}
			ruleFile, ruleRow := splitLocation(t, r.Location)
			if file, row := splitLocation(t, r.Failed.Location); file != ruleFile || row < ruleRow {
				t.Errorf("the failed condition is at %s, not in the rule's body at %s", r.Failed.Location, r.Location)
			}
		})
	}
}

// splitLocation reads file.rego:row.
func splitLocation(t *testing.T, loc string) (string, int) {
	t.Helper()
	i := strings.LastIndexByte(loc, ':')
	row, err := strconv.Atoi(loc[i+1:])
	if i < 0 || err != nil || row < 1 || !strings.HasSuffix(loc[:i], ".rego") {
		t.Fatalf("location %q is not file.rego:row", loc)
	}
	return loc[:i], row
}

func TestExplainNamesAbsentFields(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), shopBundle)
	in := apiToPostgres(5432)
	in.Source = Source{IP: "10.0.0.7"}
	in.Connection.MTLS = false
	x, err := e.Explain(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	r := findTrace(x, "shop/db", "allow", "api-only")
	if r == nil || r.Failed == nil || !r.Failed.Undefined || !strings.Contains(r.Failed.Text, "input.source.principal") {
		t.Errorf("trace = %+v", r)
	}
}

func TestExplainTopdownPackages(t *testing.T) {
	e := loadEngine(t, withQuiet(Config{}), "../examples/bundle")
	in := toAdmin("spiffe://td/ns/shop/sa/checkout")
	in.Source.Principal = "spiffe://cluster.local/ns/shop/sa/checkout"
	in.Request.Path = "/admin"
	x, err := e.Explain(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Topdown) != 1 || !strings.Contains(x.Topdown[0], "admin") {
		t.Fatalf("topdown packages = %v", x.Topdown)
	}
	r := findTrace(x, "examples/admin", "deny", "admin-only-frontend")
	if r == nil || !r.Topdown || !r.Matched || x.Decision.Allow {
		t.Errorf("topdown trace = %+v, decision %+v", r, x.Decision)
	}
	var buf bytes.Buffer
	if err := e.Trace(context.Background(), in, &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "Enter data.mesh.authz.decision") || !strings.Contains(buf.String(), "admin.rego") {
		t.Errorf("trace lacks the query or the policy file:\n%.2000s", buf.String())
	}
}

// TestExplainDataContributions: a deny contributed by bundle data (no
// rule) runs the whole set on topdown; the explanation still names it.
func TestExplainDataContributions(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		".manifest": `{"roots": ["mesh/policies/ops"]}`,
		"data.json": `{"mesh": {"policies": {"ops": {"freeze": {"deny": [{"policy": "ops/freeze", "rule": "change-freeze", "reason": "change freeze"}]}}}}}`,
		"web.rego":  "package mesh.policies.ops.web\n\nallow contains {\"policy\": \"ops/web\", \"rule\": \"any\"} if input.destination.port == 5432\n",
	})
	e := loadEngine(t, withQuiet(Config{}), dir)
	x, err := e.Explain(context.Background(), apiToPostgres(5432))
	if err != nil {
		t.Fatal(err)
	}
	if x.Decision.Allow || x.Decision.Policy != "ops/freeze" {
		t.Fatalf("decision = %+v, want deny by ops/freeze", x.Decision)
	}
	if r := findTrace(x, "ops/freeze", "deny", "change-freeze"); r == nil || !r.Matched || !r.Topdown {
		t.Errorf("no matched deny from data in %+v", x.Rules)
	}
	if r := findTrace(x, "ops/web", "allow", "any"); r == nil || !r.Matched {
		t.Errorf("no matched allow from the module in %+v", x.Rules)
	}
}
