package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regomesh/regomesh/internal/syncbuf"
)

// blockingWriter blocks every Write until release is closed, and reports
// on entered (buffered) that a Write is waiting.
type blockingWriter struct {
	syncbuf.Buffer
	entered chan struct{}
	release chan struct{}
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	return w.Buffer.Write(p)
}

type failingWriter struct{ err error }

func (w failingWriter) Write(p []byte) (int, error) { return 0, w.err }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func testL4Input() *Input {
	return &Input{
		Layer:       L4,
		Source:      Source{Principal: "spiffe://td/ns/a/sa/x", TrustDomain: "td", Namespace: "a", ServiceAccount: "x", IP: "10.1.0.5", Port: 40122},
		Destination: Destination{IP: "10.1.0.9", Port: 8080, Namespace: "b", Workload: "web-7d9", Labels: map[string]string{"app": "web"}},
		Connection:  Connection{MTLS: true},
	}
}

func testL7Input() *Input {
	in := testL4Input()
	in.Layer = L7
	in.Request = &Request{
		Method: "GET", Path: "/api?x=1", URLPath: "/api", Host: "web.b", Protocol: "HTTP/1.1",
		Headers: map[string]string{"x-foo": "bar"},
		Auth:    &Auth{Principal: "iss/sub", Audiences: []string{"a"}, Claims: map[string]any{"group": "dev"}},
	}
	return in
}

func testEvent() DecisionEvent {
	return DecisionEvent{
		Input:     testL4Input(),
		Result:    Decision{Verdict: Verdict{Allow: true, Policy: "b/allow-a", Rule: "0", Reason: "allowed by b/allow-a rule 0"}},
		Bundles:   map[string]string{"mesh": "r42"},
		Path:      "mesh/authz/decision",
		Timestamp: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600)),
		EvalNanos: 1500,
	}
}

// logAll writes events through a fresh logger and returns the decoded lines.
func logAll(t *testing.T, cfg DecisionLogConfig, events ...DecisionEvent) []map[string]any {
	t.Helper()
	var buf syncbuf.Buffer
	l, err := NewDecisionLogger(&buf, cfg, nil)
	if err != nil {
		t.Fatalf("NewDecisionLogger: %v", err)
	}
	for _, e := range events {
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return decodeLines(t, buf.Lines())
}

func decodeLines(t *testing.T, lines []string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// asJSON is v as encoding/json decodes it into an any.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func assertJSONEqual(t *testing.T, field string, got, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		t.Errorf("%s = %s, want %s", field, g, w)
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDecisionLogFields(t *testing.T) {
	shadow := Decision{Verdict: Verdict{Allow: false, Policy: "b/deny-all", Rule: "0", Reason: "denied by b/deny-all rule 0"}}
	tests := []struct {
		name  string
		event func() DecisionEvent
	}{
		{name: "l4", event: testEvent},
		{name: "l7 cached with shadow", event: func() DecisionEvent {
			e := testEvent()
			e.Input = testL7Input()
			e.Cached = true
			e.Shadow = &shadow
			return e
		}},
		{name: "audit and dry run", event: func() DecisionEvent {
			e := testEvent()
			e.Result.Audit = []PolicyRule{{Policy: "b/audit", Rule: "1"}}
			e.Result.DryRun = &Verdict{Allow: false, Policy: "b/dry", Rule: "0", Reason: "dry run"}
			return e
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.event()
			lines := logAll(t, DecisionLogConfig{}, e)
			if len(lines) != 1 {
				t.Fatalf("got %d lines, want 1", len(lines))
			}
			assertLine(t, lines[0], e)
		})
	}
}

func assertLine(t *testing.T, line map[string]any, e DecisionEvent) {
	t.Helper()
	if id, _ := line["decision_id"].(string); !uuidV4.MatchString(id) {
		t.Errorf("decision_id = %v, want a version 4 UUID", line["decision_id"])
	}
	assertJSONEqual(t, "path", line["path"], e.Path)
	assertJSONEqual(t, "input", line["input"], asJSON(t, e.Input))
	assertJSONEqual(t, "result", line["result"], asJSON(t, e.Result))
	assertJSONEqual(t, "bundles", line["bundles"], map[string]any{"mesh": map[string]any{"revision": "r42"}})
	assertJSONEqual(t, "metrics", line["metrics"], map[string]any{"timer_rego_query_eval_ns": e.EvalNanos})
	assertTimestamp(t, line["timestamp"], e.Timestamp)
	if e.Cached {
		assertJSONEqual(t, "labels", line["labels"], map[string]any{"cached": "true"})
	} else if _, ok := line["labels"]; ok {
		t.Errorf("labels present for an uncached decision: %v", line["labels"])
	}
	if e.Shadow != nil {
		assertJSONEqual(t, "shadow", line["shadow"], asJSON(t, e.Shadow))
	} else if _, ok := line["shadow"]; ok {
		t.Errorf("shadow present without a shadow decision: %v", line["shadow"])
	}
}

func assertTimestamp(t *testing.T, got any, want time.Time) {
	t.Helper()
	s, _ := got.(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !strings.HasSuffix(s, "Z") {
		t.Errorf("timestamp = %v, want RFC 3339 in UTC", got)
		return
	}
	if !ts.Equal(want) {
		t.Errorf("timestamp = %v, want %v", ts, want)
	}
}

func TestDecisionLogDefaults(t *testing.T) {
	before := time.Now()
	e := testEvent()
	e.Path = ""
	e.Timestamp = time.Time{}
	e.Input = nil
	e.Bundles = nil
	lines := logAll(t, DecisionLogConfig{}, e)
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1", len(lines))
	}
	line := lines[0]
	if line["path"] != "mesh/authz/decision" {
		t.Errorf("path = %v, want the default mesh/authz/decision", line["path"])
	}
	for _, field := range []string{"input", "bundles"} {
		if _, ok := line[field]; ok {
			t.Errorf("%s present though the event has none: %v", field, line[field])
		}
	}
	ts, err := time.Parse(time.RFC3339Nano, line["timestamp"].(string))
	if err != nil || ts.Before(before) || ts.After(time.Now()) {
		t.Errorf("timestamp = %v, want the time of Log", line["timestamp"])
	}
}

func TestDecisionLogConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     DecisionLogConfig
		wantErr string
	}{
		{name: "zero value", cfg: DecisionLogConfig{}},
		{name: "all set", cfg: DecisionLogConfig{SampleRate: 0.1, MaxPerSecond: 100, Burst: 10, BufferSize: 16}},
		{name: "sample rate 1", cfg: DecisionLogConfig{SampleRate: 1}},
		{name: "sample rate above 1", cfg: DecisionLogConfig{SampleRate: 1.5}, wantErr: "sample rate 1.5"},
		{name: "negative sample rate", cfg: DecisionLogConfig{SampleRate: -0.1}, wantErr: "sample rate -0.1"},
		{name: "NaN sample rate", cfg: DecisionLogConfig{SampleRate: math.NaN()}, wantErr: "sample rate NaN"},
		{name: "negative rate", cfg: DecisionLogConfig{MaxPerSecond: -1}, wantErr: "max per second -1"},
		{name: "infinite rate", cfg: DecisionLogConfig{MaxPerSecond: math.Inf(1)}, wantErr: "max per second +Inf"},
		{name: "negative burst", cfg: DecisionLogConfig{MaxPerSecond: 1, Burst: -1}, wantErr: "burst -1"},
		{name: "burst without rate", cfg: DecisionLogConfig{Burst: 5}, wantErr: "burst 5 has no effect"},
		{name: "negative buffer", cfg: DecisionLogConfig{BufferSize: -1}, wantErr: "buffer size -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewDecisionLogger(&syncbuf.Buffer{}, tt.cfg, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewDecisionLogger: %v", err)
				}
				if err := l.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "policy: ") {
				t.Errorf("NewDecisionLogger error = %v, want one prefixed \"policy: \" containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := NewDecisionLogger(nil, DecisionLogConfig{}, nil); err == nil {
		t.Error("NewDecisionLogger accepted a nil writer")
	}
}

func TestDecisionLogSampling(t *testing.T) {
	const events = 10_000
	reg := prometheus.NewPedanticRegistry()
	var buf syncbuf.Buffer
	l, err := NewDecisionLogger(&buf, DecisionLogConfig{SampleRate: 0.5, BufferSize: events}, NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	e := testEvent()
	for range events {
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The standard deviation is 50 lines; the band is ten of them each way.
	if n := len(buf.Lines()); n < 4500 || n > 5500 {
		t.Errorf("sample rate 0.5 logged %d of %d events, want about half", n, events)
	}
	const name = "regomesh_policy_decision_log_dropped_total"
	assertSeries(t, series(t, reg, name), map[string]float64{
		name + "{reason=buffer_full}":  0,
		name + "{reason=rate_limited}": 0,
	})
}

func TestDecisionLogRateLimit(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	reg := prometheus.NewPedanticRegistry()
	var buf syncbuf.Buffer
	cfg := DecisionLogConfig{MaxPerSecond: 10, Burst: 5}
	l, err := newDecisionLogger(&buf, cfg, NewMetrics(reg), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	e := testEvent()
	for range 20 { // the burst: 5 logged, 15 dropped
		l.Log(e)
	}
	clock.Advance(time.Second)
	for range 20 { // a second's 10 tokens, capped at the burst: 5 logged, 15 dropped
		l.Log(e)
	}
	clock.Advance(250 * time.Millisecond)
	for range 20 { // 2.5 tokens: 2 logged, 18 dropped
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(buf.Lines()); n != 12 {
		t.Errorf("logged %d events, want 12", n)
	}
	const name = "regomesh_policy_decision_log_dropped_total"
	if got := series(t, reg, name)[name+"{reason=rate_limited}"]; got != 48 {
		t.Errorf("rate_limited drops = %v, want 48", got)
	}
}

func TestDecisionLogBucket(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // offsets from start of successive takes
		want  string          // 'y' taken, 'n' refused
	}{
		{name: "burst then empty", rate: 1, burst: 3, at: []time.Duration{0, 0, 0, 0}, want: "yyyn"},
		{name: "refills at rate", rate: 2, burst: 1, at: []time.Duration{0, 0, 400 * time.Millisecond, 500 * time.Millisecond}, want: "ynny"},
		{name: "refill capped at burst", rate: 100, burst: 2, at: []time.Duration{time.Hour, time.Hour, time.Hour}, want: "yyn"},
		{name: "fractional rate", rate: 0.5, burst: 1, at: []time.Duration{0, time.Second, 2 * time.Second}, want: "yny"},
		{name: "clock going backwards", rate: 1, burst: 1, at: []time.Duration{time.Second, 0, 2 * time.Second}, want: "yny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newDecisionLogBucket(tt.rate, tt.burst, start)
			var got strings.Builder
			for _, offset := range tt.at {
				if b.take(start.Add(offset)) {
					got.WriteByte('y')
				} else {
					got.WriteByte('n')
				}
			}
			if got.String() != tt.want {
				t.Errorf("takes = %s, want %s", got.String(), tt.want)
			}
		})
	}
}

func TestDecisionLogBufferFull(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	w := newBlockingWriter()
	l, err := NewDecisionLogger(w, DecisionLogConfig{BufferSize: 2}, NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	e := testEvent()
	l.Log(e)
	<-w.entered // the writer goroutine is now stuck writing the first event
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		for range 5 { // 2 fill the queue, 3 are dropped
			l.Log(e)
		}
	}()
	// The writer stays stuck until release: a Log that waited for it would
	// never return, so a generous bound cannot hide one (nor flake on a
	// busy machine).
	select {
	case <-logged:
	case <-time.After(10 * time.Second):
		close(w.release) // let the blocked Log, and its goroutine, end
		<-logged
		t.Fatal("Log blocked behind a stuck writer")
	}
	const name = "regomesh_policy_decision_log_dropped_total"
	if got := series(t, reg, name)[name+"{reason=buffer_full}"]; got != 3 {
		t.Errorf("buffer_full drops = %v, want 3", got)
	}
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(w.Lines()); n != 3 {
		t.Errorf("wrote %d events, want the first and the 2 queued", n)
	}
}

func TestDecisionLogCloseFlushes(t *testing.T) {
	const events = 5000
	var buf syncbuf.Buffer
	l, err := NewDecisionLogger(&buf, DecisionLogConfig{BufferSize: events}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := testEvent()
	for range events {
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := len(buf.Lines()); n != events {
		t.Fatalf("Close left %d of %d events unwritten", events-n, events)
	}
	l.Log(e) // after Close: nothing, and no panic
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if n := len(buf.Lines()); n != events {
		t.Errorf("Log after Close wrote %d more lines", n-events)
	}
}

func TestDecisionLogFlushesPeriodically(t *testing.T) {
	var buf syncbuf.Buffer
	l, err := NewDecisionLogger(&buf, DecisionLogConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Log(testEvent())
	deadline := time.Now().Add(5 * time.Second)
	for len(buf.Lines()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("an event logged without Close was not written within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDecisionLogErrors(t *testing.T) {
	errDiskFull := errors.New("disk full")
	unencodable := testEvent()
	unencodable.Input = testL7Input()
	unencodable.Input.Request.Auth.Claims = map[string]any{"exp": math.Inf(1)}
	tests := []struct {
		name    string
		w       func() io.Writer
		event   DecisionEvent
		reason  string
		wantErr error
	}{
		{
			name:    "writer fails",
			w:       func() io.Writer { return failingWriter{err: errDiskFull} },
			event:   testEvent(),
			reason:  dropWriteError,
			wantErr: errDiskFull,
		},
		{
			name:   "event has no JSON form",
			w:      func() io.Writer { return &syncbuf.Buffer{} },
			event:  unencodable,
			reason: dropEncodeError,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			l, err := NewDecisionLogger(tt.w(), DecisionLogConfig{}, NewMetrics(reg))
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				l.Log(tt.event)
			}
			err = l.Close()
			if err == nil || !strings.HasPrefix(err.Error(), "policy: decision log: 3 events not written") {
				t.Errorf("Close = %v, want an error counting 3 events", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Close = %v, want it to wrap %v", err, tt.wantErr)
			}
			const name = "regomesh_policy_decision_log_dropped_total"
			if got := series(t, reg, name)[name+"{reason="+tt.reason+"}"]; got != 3 {
				t.Errorf("%s drops = %v, want 3", tt.reason, got)
			}
		})
	}
}

// TestDecisionLogCopiesInput reuses the caller's Input after each Log, as
// an engine with pooled inputs would; the race detector and the written
// lines show the logger kept its own copy.
func TestDecisionLogCopiesInput(t *testing.T) {
	const (
		goroutines = 8
		perG       = 500
	)
	var buf syncbuf.Buffer
	l, err := NewDecisionLogger(&buf, DecisionLogConfig{BufferSize: goroutines * perG}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			in := testL7Input()
			e := testEvent()
			e.Input = in
			for i := range perG {
				port := 1000*g + i + 1 // 0 would be absent from the JSON
				in.Source.Port = port
				in.Request.Method = fmt.Sprint("M", port)
				in.Request.Auth.Principal = fmt.Sprint("P", port)
				l.Log(e)
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := decodeLines(t, buf.Lines())
	if len(lines) != goroutines*perG {
		t.Fatalf("got %d lines, want %d", len(lines), goroutines*perG)
	}
	seen := map[int]bool{}
	for _, line := range lines {
		port, method, principal := loggedRequest(line)
		if method != fmt.Sprint("M", port) || principal != fmt.Sprint("P", port) {
			t.Fatalf("line mixes two Log calls: port %d, method %s, principal %s", port, method, principal)
		}
		seen[port] = true
	}
	if len(seen) != goroutines*perG {
		t.Errorf("got %d distinct events, want %d", len(seen), goroutines*perG)
	}
}

func loggedRequest(line map[string]any) (port int, method, principal string) {
	input := line["input"].(map[string]any)
	port = int(input["source"].(map[string]any)["port"].(float64))
	request := input["request"].(map[string]any)
	method = request["method"].(string)
	principal = request["auth"].(map[string]any)["principal"].(string)
	return port, method, principal
}

func TestDecisionLogNilLogger(t *testing.T) {
	var l *DecisionLogger // an engine without a decision log
	l.Log(testEvent())
	if err := l.Close(); err != nil {
		t.Errorf("Close on a nil logger = %v", err)
	}
}

// BenchmarkDecisionLogLog measures the caller's side of Log. The writer
// goroutine encodes more slowly than Log queues, so once the queue is full
// most calls take the cheaper drop path: dropped/op says how many did.
func BenchmarkDecisionLogLog(b *testing.B) {
	reg := prometheus.NewRegistry()
	l, err := NewDecisionLogger(discardWriter{}, DecisionLogConfig{}, NewMetrics(reg))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := testEvent()
	e.Input = testL7Input()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(e)
	}
	b.StopTimer()
	const name = "regomesh_policy_decision_log_dropped_total"
	dropped := series(b, reg, name)[name+"{reason=buffer_full}"]
	b.ReportMetric(dropped/float64(b.N), "dropped/op")
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

func ExampleNewDecisionLogger() {
	var out bytes.Buffer
	logger, err := NewDecisionLogger(&out, DecisionLogConfig{SampleRate: 1, MaxPerSecond: 1000}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	logger.Log(DecisionEvent{
		Input: &Input{
			Layer:       L4,
			Source:      Source{Principal: "spiffe://td/ns/a/sa/x", IP: "10.1.0.5"},
			Destination: Destination{IP: "10.1.0.9", Port: 8080, Namespace: "b"},
			Connection:  Connection{MTLS: true},
		},
		Result:    Decision{Verdict: Verdict{Allow: false, Policy: "b/deny-a", Rule: "0", Reason: "denied by b/deny-a rule 0"}},
		Bundles:   map[string]string{"mesh": "r42"},
		Path:      "mesh/authz/decision",
		EvalNanos: 1800,
	})
	if err := logger.Close(); err != nil { // flushes the line to out
		fmt.Println(err)
		return
	}

	var line struct {
		DecisionID string `json:"decision_id"`
		Path       string `json:"path"`
		Input      Input  `json:"input"`
		Result     Decision
		Bundles    map[string]struct{ Revision string }
		Metrics    map[string]int64
	}
	scanner := bufio.NewScanner(&out)
	for scanner.Scan() {
		if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("decision id is a UUID:", uuidV4.MatchString(line.DecisionID))
		fmt.Println("path:", line.Path)
		fmt.Println("source:", line.Input.Source.Principal)
		fmt.Println("allow:", line.Result.Allow, "policy:", line.Result.Policy, "rule:", line.Result.Rule)
		fmt.Println("bundle mesh revision:", line.Bundles["mesh"].Revision)
		fmt.Println("eval ns:", line.Metrics["timer_rego_query_eval_ns"])
	}
	// Output:
	// decision id is a UUID: true
	// path: mesh/authz/decision
	// source: spiffe://td/ns/a/sa/x
	// allow: false policy: b/deny-a rule: 0
	// bundle mesh revision: r42
	// eval ns: 1800
}
