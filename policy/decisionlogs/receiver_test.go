package decisionlogs

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/regomesh/regomesh/policy"
)

// patience bounds every wait for an upload: far above what any takes.
const patience = 30 * time.Second

// receiver is a decision-log service on a real TCP socket: it takes
// gzip-compressed JSON arrays on POST /logs and keeps what arrived, or
// answers 500 while failing is set.
type receiver struct {
	t    *testing.T
	addr string
	srv  *httptest.Server

	mu       sync.Mutex
	failing  bool
	events   []map[string]any
	bodies   []int // compressed size of each accepted upload
	attempts int
	changed  chan struct{} // closed and replaced at every request
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, changed: make(chan struct{})}
	r.start("127.0.0.1:0")
	t.Cleanup(func() { r.srv.Close() })
	return r
}

// start serves on addr; after stop, the same address again.
func (r *receiver) start(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Listener.Close()
	r.srv.Listener = ln
	r.srv.Start()
}

// stop closes the server: uploads meet a refused connection.
func (r *receiver) stop() { r.srv.Close() }

func (r *receiver) url() string { return "http://" + r.addr }

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	defer r.notify()
	body, err := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	if r.failing {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
		return
	}
	switch {
	case err != nil:
		r.t.Errorf("reading an upload: %v", err)
	case req.Method != http.MethodPost || req.URL.Path != "/logs":
		r.t.Errorf("upload %s %s, want POST /logs", req.Method, req.URL.Path)
	case req.Header.Get("Content-Encoding") != "gzip" || req.Header.Get("Content-Type") != "application/json":
		r.t.Errorf("upload headers %v, want Content-Encoding gzip and Content-Type application/json", req.Header)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		r.t.Errorf("upload is not gzip: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var batch []map[string]any
	if err := json.NewDecoder(zr).Decode(&batch); err != nil {
		r.t.Errorf("upload is not a JSON array: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.events = append(r.events, batch...)
	r.bodies = append(r.bodies, len(body))
}

func (r *receiver) notify() {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *receiver) setFailing(failing bool) {
	r.mu.Lock()
	r.failing = failing
	r.mu.Unlock()
}

// waitFor waits until cond holds of the receiver's state, checked after
// every request.
func (r *receiver) waitFor(what string, cond func(r *receiver) bool) {
	r.t.Helper()
	deadline := time.After(patience)
	for {
		r.mu.Lock()
		ok, changed := cond(r), r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			r.t.Fatalf("no %s within %v", what, patience)
		}
	}
}

func (r *receiver) received() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.events...)
}

// client is OPA's REST client for the receiver, as opabundles makes it.
func (r *receiver) client(t *testing.T) rest.Client {
	c, err := rest.New([]byte(fmt.Sprintf(`{"url": %q}`, r.url())), nil, rest.Name("logs"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newUploader starts an uploader to r that uploads every few
// milliseconds, stopped at the test's end.
func newUploader(t *testing.T, r *receiver, cfg Config) (*Uploader, *prometheus.Registry) {
	reg := prometheus.NewPedanticRegistry()
	pm := policy.NewMetrics(reg)
	if cfg.MaxDelay == 0 {
		cfg.MinDelay, cfg.MaxDelay = time.Millisecond, 20*time.Millisecond
	}
	u, err := New(r.client(t), cfg, NewMetrics(reg, pm.DecisionLogDropped), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		u.Close(ctx)
	})
	return u, reg
}

// metric returns the value of the series name{labels}, 0 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
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
			if hasLabels(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
			n++
		}
	}
	return n == len(labels)
}

func dropped(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	return metric(t, reg, "regomesh_policy_decision_log_dropped_total", map[string]string{"reason": reason})
}

// lines makes n events numbered from first, as the logger writes them.
func lines(first, n int, pad string) []byte {
	var b bytes.Buffer
	for i := first; i < first+n; i++ {
		fmt.Fprintf(&b, `{"decision_id":"%d","path":"mesh/authz/decision","pad":%q,"timestamp":"2026-12-07T12:00:00Z"}`+"\n", i, pad)
	}
	return b.Bytes()
}

// ids are the decision IDs of events, in order.
func ids(events []map[string]any) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i], _ = e["decision_id"].(string)
	}
	return out
}

func numbered(first, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(first + i)
	}
	return out
}
