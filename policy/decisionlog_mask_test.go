package policy

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regomesh/regomesh/internal/syncbuf"
)

// maskBundle is a bundle with a policy and OPA's decision-log mask: the
// authorization header is erased, the email claim replaced, and a result
// field erased when a header says so.
var maskBundle = map[string]string{
	".manifest": `{"roots": ["mesh/policies/web", "system/log"]}`,
	"web.rego": `package mesh.policies.web.api

allow_scope contains {"policy": "web/api"} if input.destination.service_account == "web"

allow contains {"policy": "web/api", "rule": "bearer"} if startswith(input.request.headers.authorization, "Bearer ")
`,
	"log.rego": `package system.log

mask contains "/input/request/headers/authorization"

mask contains {"op": "upsert", "path": "/input/request/auth/claims/email", "value": "**REDACTED**"} if {
	input.input.request.auth.claims.email
}

mask contains "/result/reason" if input.input.request.headers["x-hide-reason"] == "1"

mask contains "/input/request/headers/absent"
`,
}

func maskedInput(headers map[string]string) Input {
	return Input{
		Layer:       L7,
		Source:      Source{Principal: "spiffe://td/ns/a/sa/x", IP: "10.0.0.5"},
		Destination: Destination{IP: "10.0.0.9", Port: 8080, ServiceAccount: "web"},
		Connection:  Connection{MTLS: true},
		Request: &Request{Method: "GET", Path: "/api", Headers: headers,
			Auth: &Auth{Principal: "iss/sub", Claims: map[string]any{"email": "alice@example.com", "group": "dev"}}},
	}
}

func TestDecisionLogMask(t *testing.T) {
	var buf syncbuf.Buffer
	reg := prometheus.NewPedanticRegistry()
	metrics := NewMetrics(reg)
	logger, err := NewDecisionLogger(&buf, DecisionLogConfig{}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	e := loadEngine(t, withQuiet(Config{DecisionLog: logger, Metrics: metrics}), writeBundle(t, t.TempDir(), maskBundle))
	in := maskedInput(map[string]string{"authorization": "Bearer s3cr3t-token", "x-trace": "1"})
	d, err := e.Decide(context.Background(), in)
	if err != nil || !d.Allow || d.Rule != "bearer" {
		t.Fatalf("decision = %+v, %v; the mask must not change it", d, err)
	}
	hide := maskedInput(map[string]string{"authorization": "Basic czNjcjN0", "x-hide-reason": "1"})
	if _, err := e.Decide(context.Background(), hide); err != nil {
		t.Fatal(err)
	}
	if err := logger.Close(); err != nil {
		t.Fatal(err)
	}
	raw := strings.Join(buf.Lines(), "\n")
	for _, secret := range []string{"s3cr3t-token", "czNjcjN0", "alice@example.com"} {
		if strings.Contains(raw, secret) {
			t.Errorf("the decision log holds %q:\n%s", secret, raw)
		}
	}
	lines := decodeLines(t, buf.Lines())
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), raw)
	}
	first := lines[0]
	req := first["input"].(map[string]any)["request"].(map[string]any)
	assertJSONEqual(t, "headers", req["headers"], map[string]any{"x-trace": "1"})
	assertJSONEqual(t, "claims", req["auth"].(map[string]any)["claims"], map[string]any{"email": "**REDACTED**", "group": "dev"})
	assertJSONEqual(t, "erased", first["erased"], []any{"/input/request/headers/authorization"})
	assertJSONEqual(t, "masked", first["masked"], []any{"/input/request/auth/claims/email"})
	assertJSONEqual(t, "result", first["result"].(map[string]any)["rule"], "bearer")
	if _, ok := lines[1]["result"].(map[string]any)["reason"]; ok {
		t.Errorf("result.reason not erased: %v", lines[1]["result"])
	}
	assertJSONEqual(t, "second erased", lines[1]["erased"], []any{"/input/request/headers/authorization", "/result/reason"})
}

// TestDecisionLogMaskFailureDropsTheEvent: a mask that cannot be applied
// keeps the event out of the log rather than writing it unmasked.
func TestDecisionLogMaskFailureDropsTheEvent(t *testing.T) {
	var buf syncbuf.Buffer
	reg := prometheus.NewPedanticRegistry()
	metrics := NewMetrics(reg)
	logger, err := NewDecisionLogger(&buf, DecisionLogConfig{}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{".manifest": maskBundle[".manifest"], "web.rego": maskBundle["web.rego"],
		"log.rego": "package system.log\n\nmask contains \"/timestamp\"\n"}
	e := loadEngine(t, withQuiet(Config{DecisionLog: logger, Metrics: metrics}), writeBundle(t, t.TempDir(), files))
	if _, err := e.Decide(context.Background(), maskedInput(map[string]string{"authorization": "Bearer s3cr3t-token"})); err != nil {
		t.Fatal(err)
	}
	err = logger.Close()
	if err == nil || !strings.Contains(err.Error(), `mask: data.system.log.mask: mask "/timestamp": prefix not allowed`) {
		t.Errorf("Close = %v, want the mask error", err)
	}
	if lines := buf.Lines(); len(lines) != 0 {
		t.Errorf("an event was written unmasked: %v", lines)
	}
	got := series(t, reg, "regomesh_policy_decision_log_dropped_total")
	if got["regomesh_policy_decision_log_dropped_total{reason=mask_error}"] != 1 {
		t.Errorf("dropped = %v, want one mask_error", got)
	}
}

// TestMaskRules holds the rules to OPA's behaviour on the shapes its own
// tests use.
func TestMaskRules(t *testing.T) {
	tests := []struct {
		name           string
		rules          string // JSON array
		input          string
		want           string // the input after masking; "" when erased
		erased, masked []string
	}{
		{"erase a field", `["/input/a/b"]`, `{"a": {"b": 1, "c": 2}}`, `{"a": {"c": 2}}`, []string{"/input/a/b"}, nil},
		{"erase an absent field does nothing", `["/input/x/y"]`, `{"a": 1}`, `{"a": 1}`, nil, nil},
		{"erase an array element", `["/input/a/1"]`, `{"a": [1, 2, 3]}`, `{"a": [1, 3]}`, []string{"/input/a/1"}, nil},
		{"erase the whole input", `["/input"]`, `{"a": 1}`, ``, []string{"/input"}, nil},
		{"upsert creates objects on the way", `[{"op": "upsert", "path": "/input/a/b/c", "value": "x"}]`, `{"a": {}}`, `{"a": {"b": {"c": "x"}}}`, nil, []string{"/input/a/b/c"}},
		{"upsert replaces", `[{"op": "upsert", "path": "/input/a", "value": "***"}]`, `{"a": "secret"}`, `{"a": "***"}`, nil, []string{"/input/a"}},
		{"an object without op removes", `[{"path": "/input/a"}]`, `{"a": 1, "b": 2}`, `{"b": 2}`, []string{"/input/a"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v, in any
			if err := json.Unmarshal([]byte(tt.rules), &v); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tt.input), &in); err != nil {
				t.Fatal(err)
			}
			rules, err := parseMaskRules(v)
			if err != nil {
				t.Fatal(err)
			}
			target := maskTarget{input: in, hasInput: true, result: map[string]any{"allow": true}}
			for _, r := range rules {
				r.apply(&target)
			}
			if tt.want == "" {
				if target.hasInput {
					t.Errorf("input not erased: %v", target.input)
				}
			} else {
				assertJSONEqual(t, "input", target.input, asJSON(t, json.RawMessage(tt.want)))
			}
			assertJSONEqual(t, "erased", target.erased, tt.erased)
			assertJSONEqual(t, "masked", target.masked, tt.masked)
		})
	}
	for _, bad := range []string{`["input/a"]`, `["/labels/x"]`, `[{"op": "replace", "path": "/input/a"}]`, `[""]`, `[1]`, `{"a": 1}`} {
		var v any
		json.Unmarshal([]byte(bad), &v)
		if _, err := parseMaskRules(v); err == nil {
			t.Errorf("parseMaskRules(%s) accepted it", bad)
		}
	}
}
