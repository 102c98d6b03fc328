package decisionlogs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/policy"
)

// maskBundle allows requests with a bearer token and masks, as OPA does,
// the token and the email claim out of the decision log.
var maskBundle = map[string]string{
	".manifest": `{"revision": "r1", "roots": ["mesh/policies/web", "system/log"]}`,
	"web.rego": `package mesh.policies.web.api

allow_scope contains {"policy": "web/api"} if input.destination.service_account == "web"

allow contains {"policy": "web/api", "rule": "bearer"} if startswith(input.request.headers.authorization, "Bearer ")
`,
	"log.rego": `package system.log

mask contains "/input/request/headers/authorization"

mask contains {"op": "upsert", "path": "/input/request/auth/claims/email", "value": "**REDACTED**"} if {
	input.input.request.auth.claims.email
}
`,
}

// The engine's decisions reach the service in gzip-compressed JSON arrays,
// in OPA's event shape, masked, with the configured labels.
func TestUploadEngineDecisionsMasked(t *testing.T) {
	r := newReceiver(t)
	u, reg := newUploader(t, r, Config{Labels: map[string]string{"id": "ztunnel-node-1", "cached": "no"}})
	pm := policy.NewMetrics(reg)
	logger, err := policy.NewDecisionLogger(u, policy.DecisionLogConfig{}, pm)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logger.Close() })
	dir := t.TempDir()
	for name, src := range maskBundle {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(policy.Config{DecisionLog: logger, Metrics: pm})
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.Load(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	const n = 40
	for i := range n {
		in := policy.Input{
			Layer:       policy.L7,
			Source:      policy.Source{Principal: "spiffe://td/ns/a/sa/x", IP: "10.0.0.5"},
			Destination: policy.Destination{IP: "10.0.0.9", Port: 8080, ServiceAccount: "web"},
			Connection:  policy.Connection{MTLS: true},
			Request: &policy.Request{Method: "GET", Path: "/api/" + strings.Repeat("x", i),
				Headers: map[string]string{"authorization": "Bearer s3cr3t-token"},
				Auth:    &policy.Auth{Principal: "iss/sub", Claims: map[string]any{"email": "alice@example.com"}}},
		}
		if d, err := engine.Decide(t.Context(), in); err != nil || !d.Allow {
			t.Fatalf("decision %d = %+v, %v", i, d, err)
		}
	}
	r.waitFor("40 events", func(r *receiver) bool { return len(r.events) >= n })
	events := r.received()
	if len(events) != n {
		t.Fatalf("received %d events, want %d", len(events), n)
	}
	seen := map[string]bool{}
	for i, e := range events {
		id, _ := e["decision_id"].(string)
		if len(id) != 36 || seen[id] {
			t.Errorf("event %d: decision_id %q is not a fresh UUID", i, id)
		}
		seen[id] = true
		if e["path"] != "mesh/authz/decision" || e["timestamp"] == nil {
			t.Errorf("event %d: path %v, timestamp %v", i, e["path"], e["timestamp"])
		}
		if rev := e["bundles"].(map[string]any)[dir].(map[string]any)["revision"]; rev != "r1" {
			t.Errorf("event %d: bundle revision %v, want r1", i, rev)
		}
		req := e["input"].(map[string]any)["request"].(map[string]any)
		if _, ok := req["headers"].(map[string]any)["authorization"]; ok {
			t.Errorf("event %d: the authorization header was uploaded: %v", i, req["headers"])
		}
		if email := req["auth"].(map[string]any)["claims"].(map[string]any)["email"]; email != "**REDACTED**" {
			t.Errorf("event %d: email claim %v, want **REDACTED**", i, email)
		}
		if !slices.Equal(anyStrings(e["erased"]), []string{"/input/request/headers/authorization"}) ||
			!slices.Equal(anyStrings(e["masked"]), []string{"/input/request/auth/claims/email"}) {
			t.Errorf("event %d: erased %v, masked %v", i, e["erased"], e["masked"])
		}
		if res := e["result"].(map[string]any); res["allow"] != true || res["rule"] != "bearer" {
			t.Errorf("event %d: result %v", i, res)
		}
		if l := e["labels"].(map[string]any); l["id"] != "ztunnel-node-1" || l["cached"] != "no" {
			t.Errorf("event %d: labels %v, want the configured ones", i, l)
		}
	}
	waitMetric(t, reg, "regomesh_policy_decision_log_uploaded_total", n) // counted once the answer is read
}

func anyStrings(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// A service answering 500 loses nothing the buffer holds: once it answers
// again every event arrives, once and in order. A closed one with more
// events than the buffer holds: the oldest are dropped and counted, the
// rest arrive when it is back on the same address.
func TestUploadServiceFailsAndRecovers(t *testing.T) {
	r := newReceiver(t)
	u, reg := newUploader(t, r, Config{BufferLimitEvents: 60})

	r.setFailing(true)
	u.Write(lines(0, 50, ""))
	waitMetric(t, reg, "regomesh_policy_decision_log_upload_failures_total", 3)
	r.setFailing(false)
	r.waitFor("50 events", func(r *receiver) bool { return len(r.events) >= 50 })
	if got := ids(r.received()); !slices.Equal(got, numbered(0, 50)) {
		t.Fatalf("after 500s received %v, want 0..49 once each, in order", got)
	}

	waitMetric(t, reg, "regomesh_policy_decision_log_uploaded_total", 50) // nothing in flight
	r.stop()
	u.Write(lines(50, 100, "")) // 40 more than the buffer holds
	if got := dropped(t, reg, DropBufferFull); got != 40 {
		t.Errorf("dropped{reason=%s} = %v, want 40", DropBufferFull, got)
	}
	waitMetric(t, reg, "regomesh_policy_decision_log_upload_failures_total", 5) // 3 answered 500, 2 refused
	r.start(r.addr)
	r.waitFor("150 events", func(r *receiver) bool { return len(r.events) >= 110 })
	if got := ids(r.received()); !slices.Equal(got, append(numbered(0, 50), numbered(90, 60)...)) {
		t.Fatalf("after the restart received %v, want 0..49 then 90..149", got)
	}
	waitMetric(t, reg, "regomesh_policy_decision_log_uploaded_total", 110)
	if got := dropped(t, reg, DropBufferFull); got != 40 {
		t.Errorf("dropped{reason=%s} = %v, want still 40", DropBufferFull, got)
	}
}

// waitMetric waits until the counter name reaches want; it polls, since a
// refused connection reaches no receiver to tell of it.
func waitMetric(t *testing.T, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(patience)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for metric(t, reg, name, nil) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed below %v for %v", name, want, patience)
		}
		<-tick.C
	}
}

// No upload is larger than upload_size_limit_bytes compressed; an event
// that cannot fit alone is dropped and counted, and the others arrive.
func TestUploadSizeLimit(t *testing.T) {
	r := newReceiver(t)
	const limit = 1024
	u, reg := newUploader(t, r, Config{UploadLimitBytes: limit, MinDelay: time.Hour, MaxDelay: time.Hour})
	for i := range 100 {
		u.Write(lines(i, 1, randomHex(t, 60))) // incompressible: several uploads
	}
	u.Write(lines(100, 1, randomHex(t, 2000))) // alone past the limit
	u.Write(lines(101, 1, ""))
	if err := u.Close(context.Background()); err != nil { // uploads what is buffered
		t.Fatal(err)
	}
	if got := ids(r.received()); !slices.Equal(got, append(numbered(0, 100), "101")) {
		t.Fatalf("received %v, want 0..99 and 101", got)
	}
	r.mu.Lock()
	bodies := slices.Clone(r.bodies)
	r.mu.Unlock()
	if len(bodies) < 5 {
		t.Errorf("%d uploads, want several for 100 incompressible events", len(bodies))
	}
	for i, n := range bodies {
		if n > limit {
			t.Errorf("upload %d is %d bytes, over the %d limit", i, n, limit)
		}
	}
	if got := dropped(t, reg, DropTooLarge); got != 1 {
		t.Errorf("dropped{reason=%s} = %v, want 1", DropTooLarge, got)
	}
}

// Close makes a last upload; what the service then refuses is counted as
// unsent.
func TestCloseUploadsOrCounts(t *testing.T) {
	r := newReceiver(t)
	u, _ := newUploader(t, r, Config{MinDelay: time.Hour, MaxDelay: time.Hour})
	u.Write(lines(0, 3, ""))
	if err := u.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ids(r.received()); !slices.Equal(got, numbered(0, 3)) {
		t.Fatalf("received %v at Close, want 0..2", got)
	}

	r.setFailing(true)
	u, reg := newUploader(t, r, Config{MinDelay: time.Hour, MaxDelay: time.Hour})
	u.Write(lines(3, 4, ""))
	if err := u.Close(context.Background()); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("Close = %v, want the service's 500", err)
	}
	if got := dropped(t, reg, DropUnsent); got != 4 {
		t.Errorf("dropped{reason=%s} = %v, want 4", DropUnsent, got)
	}
}

// max_decisions_per_second: events over the rate are dropped and counted.
func TestUploadRateLimit(t *testing.T) {
	r := newReceiver(t)
	u, reg := newUploader(t, r, Config{MaxPerSecond: 5, MinDelay: time.Hour, MaxDelay: time.Hour})
	u.Write(lines(0, 20, "")) // within a second: the burst of 5 passes
	if got := dropped(t, reg, DropRateLimited); got < 14 || got > 15 {
		t.Errorf("dropped{reason=%s} = %v, want 15 (14 if a token grew meanwhile)", DropRateLimited, got)
	}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n/2)
	rand.Read(b)
	return hex.EncodeToString(b)
}
