package policy

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Reasons a decision-log event is lost, the reason label of
// regomesh_policy_decision_log_dropped_total.
const (
	dropRateLimited = "rate_limited" // over DecisionLogConfig.MaxPerSecond
	dropBufferFull  = "buffer_full"  // the writer fell behind by BufferSize events
	dropEncodeError = "encode_error" // the event has no JSON form (an unencodable claim)
	dropWriteError  = "write_error"  // the writer returned an error
	dropMaskError   = "mask_error"   // data.system.log.mask failed: the event is not written unmasked
)

const (
	defaultDecisionLogBuffer = 4096
	defaultDecisionLogPath   = "mesh/authz/decision"
	// decisionLogFlushEvery bounds how long a written event waits in memory.
	decisionLogFlushEvery = 100 * time.Millisecond
	// decisionLogFlushBytes bounds the memory held between flushes.
	decisionLogFlushBytes = 64 << 10
)

// DecisionLogConfig configures sampling and rate limiting. The zero value
// logs every decision, without rate limit, queueing up to 4096 events.
type DecisionLogConfig struct {
	// SampleRate is the fraction of decisions logged, in (0, 1]; 0 means 1.
	// Decisions left out by sampling are not counted as dropped.
	SampleRate float64
	// MaxPerSecond caps the events logged per second (a token bucket, after
	// sampling); events over the cap are dropped and counted with reason
	// "rate_limited". 0 means unlimited.
	MaxPerSecond float64
	// Burst is the token bucket's size: how many events may be logged at
	// once after a quiet period. 0 means max(1, MaxPerSecond). It requires
	// MaxPerSecond.
	Burst int
	// BufferSize is how many events may wait for the writer; beyond it
	// events are dropped and counted with reason "buffer_full", so a slow
	// writer never slows decisions. 0 means 4096.
	BufferSize int
	// ShadowDisagreements, when set, also receives every event whose shadow
	// decision disagrees with the enforced one on allow: the same line, the
	// same decision_id, masked the same way, whatever SampleRate leaves
	// out (MaxPerSecond and BufferSize still bound them). It is what
	// `regomesh policy replay --log` reads to show what a candidate would
	// change. With it, the logger's own writer may be nil.
	ShadowDisagreements io.Writer
}

// DecisionEvent is what the engine hands to the logger for one decision.
// Log copies the event and the structs it points to; the maps and slices
// (labels, headers, audiences, claims, audit rules, bundles) are kept by
// reference and must not be modified afterwards.
type DecisionEvent struct {
	Input  *Input
	Result Decision
	// Bundles maps each bundle name in force to its revision.
	Bundles map[string]string
	// Path is the query path, "mesh/authz/decision" when empty.
	Path string
	// Timestamp is when the decision was made; zero means when Log is called.
	Timestamp time.Time
	// EvalNanos is the time spent deciding.
	EvalNanos int64
	// Cached reports that the decision came from the L4 decision cache.
	Cached bool
	// Shadow is the shadow bundle set's decision, nil when none is configured.
	Shadow *Decision

	// mask is the deciding set's data.system.log.mask, nil when it has none.
	mask *logMask
}

// DecisionLogger writes decision logs in OPA's decision-log JSON shape, one
// object per line:
//
//	{"decision_id": "<uuid v4>", "path": "mesh/authz/decision",
//	 "input": {...}, "result": {...}, "bundles": {"<name>": {"revision": "<rev>"}},
//	 "timestamp": "<RFC 3339, UTC>", "metrics": {"timer_rego_query_eval_ns": N},
//	 "labels": {"cached": "true"}, "shadow": {...}}
//
// "input" is absent when the event has none, "bundles" when it names no
// bundle, "labels" when the decision was not cached, and "shadow" when no
// shadow decision was made. When the deciding bundle set defines OPA's
// data.system.log.mask, the event is masked as OPA masks it
// (decisionlog_mask.go) and lists the pointers it "erased" and "masked".
//
// Log never blocks: it samples, takes a rate-limit token and queues the
// event; one goroutine encodes and writes queued events, flushing at least
// every 100 ms. A DecisionLogger is safe for concurrent use.
type DecisionLogger struct {
	w          io.Writer // nil: only disagreements are written, to shadow
	shadow     io.Writer // nil: disagreements are not written apart
	metrics    *Metrics
	sampleRate float64
	limiter    *decisionLogBucket // nil when unlimited
	now        func() time.Time

	// mu orders Log's sends before Close's close(queue): Log sends while
	// holding mu.RLock and only while closed is false.
	mu     sync.RWMutex
	closed bool
	queue  chan *decisionLogRecord
	done   chan struct{} // closed when the writer goroutine has returned

	// Owned by the writer goroutine until done is closed.
	ids     *rand.ChaCha8
	buf     bytes.Buffer
	pending int // events in buf
	sbuf    bytes.Buffer
	spend   int // events in sbuf
	lost    int // events lost to encode or write errors
	err     error
}

// decisionLogRecord is one queued event, copied out of the caller's hands:
// event.Input, when set, points at input.
type decisionLogRecord struct {
	event DecisionEvent
	input Input
	main  bool // for the main writer; else only a shadow disagreement
}

// NewDecisionLogger returns a logger writing to w, which it never closes.
// It checks cfg and starts the writer goroutine; call Close to stop it.
// metrics may be nil.
func NewDecisionLogger(w io.Writer, cfg DecisionLogConfig, metrics *Metrics) (*DecisionLogger, error) {
	return newDecisionLogger(w, cfg, metrics, time.Now)
}

// newDecisionLogger is NewDecisionLogger with the clock that timestamps
// events and drives the rate limit.
func newDecisionLogger(w io.Writer, cfg DecisionLogConfig, metrics *Metrics, now func() time.Time) (*DecisionLogger, error) {
	if w == nil && cfg.ShadowDisagreements == nil {
		return nil, errors.New("policy: decision log: writer is nil")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	l := &DecisionLogger{
		w:          w,
		shadow:     cfg.ShadowDisagreements,
		metrics:    metrics,
		sampleRate: cfg.SampleRate,
		now:        now,
		queue:      make(chan *decisionLogRecord, cfg.BufferSize),
		done:       make(chan struct{}),
		ids:        rand.NewChaCha8(randomSeed()),
	}
	if cfg.MaxPerSecond > 0 {
		l.limiter = newDecisionLogBucket(cfg.MaxPerSecond, cfg.Burst, l.now())
	}
	go l.run()
	return l, nil
}

func (c DecisionLogConfig) validate() error {
	if math.IsNaN(c.SampleRate) || c.SampleRate < 0 || c.SampleRate > 1 {
		return fmt.Errorf("policy: decision log: sample rate %v is not in (0, 1] (0 means 1)", c.SampleRate)
	}
	if math.IsNaN(c.MaxPerSecond) || math.IsInf(c.MaxPerSecond, 0) || c.MaxPerSecond < 0 {
		return fmt.Errorf("policy: decision log: max per second %v is not a finite rate >= 0 (0 means unlimited)", c.MaxPerSecond)
	}
	if c.Burst < 0 {
		return fmt.Errorf("policy: decision log: burst %d is negative", c.Burst)
	}
	if c.Burst > 0 && c.MaxPerSecond == 0 {
		return fmt.Errorf("policy: decision log: burst %d has no effect without max per second", c.Burst)
	}
	if c.BufferSize < 0 {
		return fmt.Errorf("policy: decision log: buffer size %d is negative", c.BufferSize)
	}
	return nil
}

func (c DecisionLogConfig) withDefaults() DecisionLogConfig {
	if c.SampleRate == 0 {
		c.SampleRate = 1
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(c.MaxPerSecond))
	}
	if c.BufferSize == 0 {
		c.BufferSize = defaultDecisionLogBuffer
	}
	return c
}

func randomSeed() [32]byte {
	var seed [32]byte
	crand.Read(seed[:]) // never fails (crypto/rand.Read panics instead)
	return seed
}

// Log queues e for writing unless sampling leaves it out, the rate limit is
// reached or the queue is full; the last two are counted as drops. It never
// blocks, and does nothing after Close or on a nil logger.
func (l *DecisionLogger) Log(e DecisionEvent) {
	if l == nil {
		return
	}
	main := l.w != nil && l.sampled()
	if !main && !(l.shadow != nil && e.disagrees()) {
		return
	}
	if l.limiter != nil && !l.limiter.take(l.now()) {
		l.metrics.decisionLogDropped(dropRateLimited)
		return
	}
	l.enqueue(e, main)
}

// disagrees reports whether the shadow set decided otherwise on allow.
func (e *DecisionEvent) disagrees() bool {
	return e.Shadow != nil && e.Shadow.Allow != e.Result.Allow
}

func (l *DecisionLogger) sampled() bool {
	return l.sampleRate >= 1 || rand.Float64() < l.sampleRate
}

// record copies what the writer goroutine needs, so the caller may reuse
// the structs of e (Input, Request, Auth, Shadow, DryRun) as soon as Log
// returns.
func (l *DecisionLogger) record(e DecisionEvent, main bool) *decisionLogRecord {
	r := &decisionLogRecord{event: e, main: main}
	if e.Input != nil {
		r.input = copyInput(*e.Input)
		r.event.Input = &r.input
	}
	r.event.Result = copyDecision(e.Result)
	if e.Shadow != nil {
		shadow := copyDecision(*e.Shadow)
		r.event.Shadow = &shadow
	}
	if e.Timestamp.IsZero() {
		r.event.Timestamp = l.now()
	}
	return r
}

// copyDecision copies d and the verdict it points to; Audit is shared.
func copyDecision(d Decision) Decision {
	if d.DryRun != nil {
		dryRun := *d.DryRun
		d.DryRun = &dryRun
	}
	return d
}

// copyInput copies in and the structs it points to; maps and slices are
// shared, except a request's HTTPHeader, which its proxy goes on changing:
// the copy holds the headers document built from it now.
func copyInput(in Input) Input {
	if in.Request == nil {
		return in
	}
	req := in.Request.withHeaders()
	if req.Auth != nil {
		auth := *req.Auth
		req.Auth = &auth
	}
	in.Request = &req
	return in
}

// enqueue queues a copy of e. A full queue is checked before copying, so
// an overloaded writer does not also cost the callers allocations.
func (l *DecisionLogger) enqueue(e DecisionEvent, main bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return
	}
	if len(l.queue) == cap(l.queue) {
		l.metrics.decisionLogDropped(dropBufferFull)
		return
	}
	select {
	case l.queue <- l.record(e, main):
	default:
		l.metrics.decisionLogDropped(dropBufferFull)
	}
}

// Close writes every queued event, flushes, and stops the writer goroutine;
// Log calls after Close do nothing. It waits for the writer, so a writer
// that never returns blocks Close. It returns an error when events were
// lost to write or encode errors, wrapping the first such error. It does
// not close the writer, and returns the same result when called again.
// Closing a nil logger does nothing.
func (l *DecisionLogger) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.queue)
	}
	l.mu.Unlock()
	<-l.done
	if l.err != nil {
		return fmt.Errorf("policy: decision log: %d events not written: %w", l.lost, l.err)
	}
	return nil
}

// run is the writer goroutine: it encodes queued events into buf and
// writes buf out every decisionLogFlushEvery, when it grows past
// decisionLogFlushBytes, and once the queue is closed and drained.
func (l *DecisionLogger) run() {
	defer close(l.done)
	ticker := time.NewTicker(decisionLogFlushEvery)
	defer ticker.Stop()
	for {
		select {
		case r, ok := <-l.queue:
			if !ok {
				l.flush()
				return
			}
			l.encode(r)
			if l.buf.Len()+l.sbuf.Len() >= decisionLogFlushBytes {
				l.flush()
			}
		case <-ticker.C:
			l.flush()
		}
	}
}

func (l *DecisionLogger) encode(r *decisionLogRecord) {
	line := l.line(&r.event)
	if r.event.mask != nil {
		if err := r.event.mask.apply(context.Background(), &line); err != nil {
			l.fail(1, dropMaskError, fmt.Errorf("mask: %w", err))
			return
		}
	}
	start := l.buf.Len()
	enc := json.NewEncoder(&l.buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(line); err != nil {
		l.buf.Truncate(start)
		l.fail(1, dropEncodeError, fmt.Errorf("encode: %w", err))
		return
	}
	if l.shadow != nil && r.event.disagrees() {
		l.sbuf.Write(l.buf.Bytes()[start:])
		l.spend++
	}
	if !r.main {
		l.buf.Truncate(start)
		return
	}
	l.pending++
}

func (l *DecisionLogger) flush() {
	if l.buf.Len() > 0 {
		if _, err := l.w.Write(l.buf.Bytes()); err != nil {
			l.fail(l.pending, dropWriteError, fmt.Errorf("write: %w", err))
		}
		l.buf.Reset()
		l.pending = 0
	}
	if l.sbuf.Len() > 0 {
		if _, err := l.shadow.Write(l.sbuf.Bytes()); err != nil {
			l.fail(l.spend, dropWriteError, fmt.Errorf("write shadow disagreements: %w", err))
		}
		l.sbuf.Reset()
		l.spend = 0
	}
}

// fail records n events lost for reason. A failed write counts every event
// of the batch as lost, though the writer may have taken some of them.
func (l *DecisionLogger) fail(n int, reason string, err error) {
	l.lost += n
	if l.err == nil {
		l.err = err
	}
	for range n {
		l.metrics.decisionLogDropped(reason)
	}
}

// decisionLogLine is the JSON form of one event, field names as OPA's.
type decisionLogLine struct {
	DecisionID string                       `json:"decision_id"`
	Path       string                       `json:"path"`
	Input      any                          `json:"input,omitempty"`  // *Input, or its masked JSON form
	Result     any                          `json:"result,omitempty"` // *Decision, or its masked JSON form
	Bundles    map[string]decisionLogBundle `json:"bundles,omitempty"`
	Timestamp  string                       `json:"timestamp"`
	Metrics    decisionLogMetrics           `json:"metrics"`
	Labels     map[string]string            `json:"labels,omitempty"`
	Shadow     *Decision                    `json:"shadow,omitempty"`
	Erased     []string                     `json:"erased,omitempty"`
	Masked     []string                     `json:"masked,omitempty"`
}

type decisionLogBundle struct {
	Revision string `json:"revision"`
}

type decisionLogMetrics struct {
	EvalNanos int64 `json:"timer_rego_query_eval_ns"`
}

func (l *DecisionLogger) line(e *DecisionEvent) decisionLogLine {
	line := decisionLogLine{
		DecisionID: l.decisionID(),
		Path:       e.Path,
		Result:     &e.Result,
		Bundles:    bundleRevisions(e.Bundles),
		Timestamp:  e.Timestamp.UTC().Format(time.RFC3339Nano),
		Metrics:    decisionLogMetrics{EvalNanos: e.EvalNanos},
		Shadow:     e.Shadow,
	}
	if e.Input != nil {
		line.Input = e.Input // a nil *Input in the interface would encode as null
	}
	if line.Path == "" {
		line.Path = defaultDecisionLogPath
	}
	if e.Cached {
		line.Labels = map[string]string{"cached": "true"}
	}
	return line
}

func bundleRevisions(revisions map[string]string) map[string]decisionLogBundle {
	if len(revisions) == 0 {
		return nil
	}
	bundles := make(map[string]decisionLogBundle, len(revisions))
	for name, rev := range revisions {
		bundles[name] = decisionLogBundle{Revision: rev}
	}
	return bundles
}

// decisionID returns a random (version 4) UUID. The IDs come from a
// ChaCha8 stream seeded from crypto/rand: unique, and cheap to make.
func (l *DecisionLogger) decisionID() string {
	var id [16]byte
	_, _ = l.ids.Read(id[:])  // ChaCha8.Read never fails
	id[6] = id[6]&0x0f | 0x40 // version 4
	id[8] = id[8]&0x3f | 0x80 // RFC 9562 variant
	var s [36]byte
	hex.Encode(s[0:8], id[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], id[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], id[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], id[8:10])
	s[23] = '-'
	hex.Encode(s[24:], id[10:])
	return string(s[:])
}

// decisionLogBucket is a token bucket: it holds up to burst tokens and
// gains rate tokens per second; each logged event takes one.
type decisionLogBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newDecisionLogBucket(rate float64, burst int, now time.Time) *decisionLogBucket {
	return &decisionLogBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// take reports whether a token was available at now, and takes it.
func (b *decisionLogBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(b.burst, b.tokens+elapsed.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
