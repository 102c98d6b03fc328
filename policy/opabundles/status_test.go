package opabundles

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// statusService is an OPA status service on a real socket: it keeps the
// reports POSTed to /status, refusing the first failFirst with a 500.
type statusService struct {
	t         *testing.T
	mu        sync.Mutex
	failFirst int
	posts     int
	reports   []statusReport
	changed   chan struct{}
}

// statusReport is the part of OPA's status update the tests read.
type statusReport struct {
	Labels  map[string]string `json:"labels"`
	Bundles map[string]struct {
		Name                     string      `json:"name"`
		ActiveRevision           string      `json:"active_revision"`
		LastSuccessfulActivation time.Time   `json:"last_successful_activation"`
		LastSuccessfulDownload   time.Time   `json:"last_successful_download"`
		LastRequest              time.Time   `json:"last_request"`
		Code                     string      `json:"code"`
		HTTPCode                 json.Number `json:"http_code"`
		Message                  string      `json:"message"`
	} `json:"bundles"`
}

func (s *statusService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer func() { close(s.changed); s.changed = make(chan struct{}); s.mu.Unlock() }()
	s.posts++
	if r.Method != http.MethodPost || r.URL.Path != "/status" || r.Header.Get("Content-Type") != "application/json" {
		s.t.Errorf("status report %s %s (%s), want POST /status as JSON", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		http.Error(w, "want POST /status as JSON", http.StatusBadRequest)
		return
	}
	if s.posts <= s.failFirst {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
		return
	}
	var rep statusReport
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		s.t.Errorf("status report: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.reports = append(s.reports, rep)
}

// waitReport waits for a report that satisfies ok, checked at each POST.
func (s *statusService) waitReport(t *testing.T, what string, ok func(statusReport) bool) statusReport {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		s.mu.Lock()
		changed := s.changed
		for _, r := range s.reports {
			if ok(r) {
				s.mu.Unlock()
				return r
			}
		}
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no status report with %s within 60s", what)
		}
	}
}

// Bundle status reaches the status service in OPA's shape: the active
// revision and when it was activated, a download failure with its code
// and HTTP status (the revision in force unchanged), and the next
// revision; a status service that fails at first gets the report when it
// answers again.
func TestStatusReports(t *testing.T) {
	srv := newBundleServer(t, false).start(t)
	srv.publish(denyPort{"remote", "r1", 1}.tarball(t, nil, ""))
	status := &statusService{t: t, failFirst: 2, changed: make(chan struct{})}
	statusSrv := httptest.NewServer(status)
	t.Cleanup(statusSrv.Close)
	startSet(t, fmt.Sprintf(`
services:
  bundles: {url: %s}
  reports: {url: %s}
labels: {cluster: test}
bundles:
  authz:
    service: bundles
    polling: {min_delay_seconds: 1, max_delay_seconds: 1}
status: {service: reports}
`, srv.URL, statusSrv.URL), Options{})

	r1 := status.waitReport(t, "authz active at r1", func(r statusReport) bool {
		return r.Bundles["authz"].ActiveRevision == "r1"
	})
	b := r1.Bundles["authz"]
	if b.Name != "authz" || b.LastSuccessfulActivation.IsZero() || b.LastSuccessfulDownload.IsZero() || b.Code != "" || r1.Labels["cluster"] != "test" || r1.Labels["id"] != InstanceID || len(InstanceID) != 36 {
		t.Errorf("report of r1 = %+v", r1)
	}
	status.mu.Lock()
	if status.posts < 3 {
		t.Errorf("%d POSTs, want the 2 refused and at least one more", status.posts)
	}
	status.mu.Unlock()

	srv.failWith(http.StatusInternalServerError)
	failed := status.waitReport(t, "authz failing with HTTP 500", func(r statusReport) bool {
		return r.Bundles["authz"].HTTPCode == "500"
	}).Bundles["authz"]
	if failed.Code != "bundle_error" || failed.ActiveRevision != "r1" || !failed.LastSuccessfulActivation.Equal(b.LastSuccessfulActivation) {
		t.Errorf("report of the failure = %+v, want bundle_error with r1 still active since %v", failed, b.LastSuccessfulActivation)
	}

	srv.failWith(0)
	srv.publish(denyPort{"remote", "r2", 2}.tarball(t, nil, ""))
	r2 := status.waitReport(t, "authz active at r2", func(r statusReport) bool {
		return r.Bundles["authz"].ActiveRevision == "r2"
	}).Bundles["authz"]
	if r2.Code != "" || r2.Message != "" || !r2.LastSuccessfulActivation.After(b.LastSuccessfulActivation) {
		t.Errorf("report of r2 = %+v, want no error and a later activation", r2)
	}
}
