package opabundles

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/policy"
)

// logService is an OPA decision-log service on a real socket.
type logService struct {
	mu     sync.Mutex
	events []map[string]any
}

func (s *logService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	zr, err := gzip.NewReader(r.Body)
	if err != nil || r.URL.Path != "/logs" {
		http.Error(w, fmt.Sprintf("%s: %v", r.URL.Path, err), http.StatusBadRequest)
		return
	}
	var batch []map[string]any
	if err := json.NewDecoder(zr).Decode(&batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, batch...)
	s.mu.Unlock()
}

func (s *logService) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		out = append(out, e["decision_id"].(string))
	}
	return out
}

// A proxy's decision logs, wired as the proxies wire them: every decision
// in the --decision-log file and at the decision_logs service with the
// same decision_id (the file configuring only decision logs, the policy
// coming from --bundle), the shadow bundles' disagreements in the
// --shadow-log file and in regomesh_policy_shadow_disagreements_total, and
// a changed shadow bundle picked up, while the enforced decisions never
// change.
func TestDecisionLogFilesAndShadow(t *testing.T) {
	service := &logService{}
	srv := httptest.NewServer(service)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	opaConfig := filepath.Join(dir, "opa.yaml")
	os.WriteFile(opaConfig, []byte(fmt.Sprintf(`
services: {logs: {url: %q}}
labels: {cluster: test}
decision_logs: {reporting: {min_delay_seconds: 0, max_delay_seconds: 1}}
`, srv.URL)), 0o644)
	live, candidate := filepath.Join(dir, "live"), filepath.Join(dir, "candidate")
	writeLocalBundle(t, live, denyPort{owner: "live", revision: "1", port: 81})
	writeLocalBundle(t, candidate, denyPort{owner: "cand", revision: "1", port: 80})
	files := DecisionLogFiles{Path: filepath.Join(dir, "decisions.jsonl"), OPAConfig: opaConfig, Shadow: filepath.Join(dir, "shadow.jsonl")}

	reg := prometheus.NewPedanticRegistry()
	metrics := policy.NewMetrics(reg)
	log := testLogger(t)
	dl, closeLog, err := DecisionLog(files, nil, metrics, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(policy.Config{Metrics: metrics, DecisionLog: dl, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ReadConfig(opaConfig)
	if err != nil {
		t.Fatal(err)
	}
	set, err := New(engine, cfg, Options{Local: policy.BundleFiles{Paths: []string{live}}, Shadow: policy.BundleFiles{Paths: []string{candidate}},
		LocalPoll: 10 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := &harness{set: set, engine: engine}
	h.wantDecisions(t, map[int]string{80: "", 81: "live/p", 82: ""})
	disagreements := func(policy, rule, shadowPolicy, shadowRule string) float64 {
		return counterValue(t, reg, "regomesh_policy_shadow_disagreements_total",
			map[string]string{"layer": "l4", "policy": policy, "rule": rule, "shadow_policy": shadowPolicy, "shadow_rule": shadowRule})
	}
	if n := disagreements("", "", "cand/p", "port"); n != 1 {
		t.Errorf("disagreements on port 80 (allowed, the candidate denies) = %v, want 1", n)
	}
	if n := disagreements("live/p", "port", "", ""); n != 1 {
		t.Errorf("disagreements on port 81 (denied, the candidate allows) = %v, want 1", n)
	}

	writeLocalBundle(t, candidate, denyPort{owner: "cand", revision: "2", port: 82})
	waitFor(t, "the changed shadow bundle denies port 82", func() bool {
		h.wantDecisions(t, map[int]string{82: ""})
		return disagreements("", "", "cand/p", "port") >= 2
	})
	set.Stop()
	closeLog()

	logged := readLines(t, files.Path)
	shadow := readLines(t, files.Shadow)
	if len(logged) < 4 {
		t.Fatalf("%d decisions logged, want at least 4", len(logged))
	}
	var loggedIDs, disagreeing []string
	for _, l := range logged {
		loggedIDs = append(loggedIDs, l["decision_id"].(string))
		if s, ok := l["shadow"].(map[string]any); ok && s["allow"] != l["result"].(map[string]any)["allow"] {
			disagreeing = append(disagreeing, l["decision_id"].(string))
		}
	}
	if got := service.ids(); !slices.Equal(got, loggedIDs) {
		t.Errorf("the service received %v, the file holds %v", got, loggedIDs)
	}
	var shadowIDs []string
	for _, l := range shadow {
		shadowIDs = append(shadowIDs, l["decision_id"].(string))
	}
	if len(disagreeing) != 3 || !slices.Equal(shadowIDs, disagreeing) {
		t.Errorf("--shadow-log holds %v, want the 3 disagreeing decisions %v", shadowIDs, disagreeing)
	}
	service.mu.Lock()
	labels := service.events[0]["labels"].(map[string]any)
	service.mu.Unlock()
	if labels["cluster"] != "test" {
		t.Errorf("uploaded labels %v, want the file's cluster: test", labels)
	}
}

// counterValue is the counter name{labels} of reg, 0 when absent.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if equalMaps(got, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, m)
	}
	return out
}

// A file that configures decision logs alone needs --bundle: the library
// alone would allow everything.
func TestDecisionLogsOnlyNeedsLocalBundles(t *testing.T) {
	cfg, err := ParseConfig([]byte("services: {s: {url: 'http://a'}}\ndecision_logs: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(policy.Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(engine, cfg, Options{}); err == nil || !strings.Contains(err.Error(), "nothing would be enforced") {
		t.Errorf("New = %v, want nothing to enforce refused", err)
	}
}
