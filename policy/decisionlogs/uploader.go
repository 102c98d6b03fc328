package decisionlogs

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/open-policy-agent/opa/v1/util"
)

// Uploader ships decision-log events to an OPA decision-log service. Give
// it to policy.NewDecisionLogger as (part of) its writer: every line
// written is one event.
//
// Invariants:
//   - Write never blocks on the network and never returns an error: it
//     only appends to the bounded buffer, dropping (and counting) the
//     oldest events beyond its bounds;
//   - an event leaves the buffer only in an upload; one whose upload
//     failed goes back to the front of the buffer, so events inside the
//     bound are retried until the service takes them, in order;
//   - one goroutine uploads, from New until Close returns.
type Uploader struct {
	client  rest.Client
	cfg     Config
	metrics *Metrics
	log     *slog.Logger

	mu      sync.Mutex // guards buf and limiter
	buf     buffer
	limiter *bucket // nil: no cap

	cancel context.CancelFunc // ends an upload in progress at Close
	stop   chan struct{}      // closed by Close
	done   chan struct{}      // closed when the goroutine has returned
	once   sync.Once
}

// New checks cfg and starts the upload loop, posting with client (OPA's
// REST client for the configured service, credentials included). metrics
// and log may be nil. Close stops it.
func New(client rest.Client, cfg Config, metrics *Metrics, log *slog.Logger) (*Uploader, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &Uploader{
		client: client, cfg: cfg, metrics: cmp.Or(metrics, NewMetrics(nil, nil)),
		log:    cmp.Or(log, slog.Default()).With("component", "decisionlogs"),
		buf:    buffer{maxBytes: cfg.BufferLimitBytes, maxEvents: cfg.BufferLimitEvents},
		cancel: cancel, stop: make(chan struct{}), done: make(chan struct{}),
	}
	if cfg.MaxPerSecond > 0 {
		u.limiter = newBucket(cfg.MaxPerSecond, time.Now())
	}
	go u.run(ctx)
	return u, nil
}

// Write takes p, whole JSON lines as policy.DecisionLogger writes them,
// into the buffer, one event a line. It never fails.
func (u *Uploader) Write(p []byte) (int, error) {
	var events [][]byte
	for line := range bytes.Lines(p) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		events = append(events, u.labelled(line))
	}
	u.mu.Lock()
	now, limited := time.Now(), 0
	kept := events[:0]
	for _, e := range events {
		if u.limiter != nil && !u.limiter.take(now) {
			limited++
			continue
		}
		kept = append(kept, e)
	}
	dropped := u.buf.push(kept...)
	n := len(u.buf.events)
	u.mu.Unlock()
	u.metrics.buffered.Set(float64(n))
	u.metrics.dropped(DropRateLimited, limited)
	u.metrics.dropped(DropBufferFull, dropped)
	return len(p), nil
}

// labelled returns a copy of line with the configured labels added to the
// event's own; line itself when there are none to add or it is not an
// object (which the service is then left to refuse).
func (u *Uploader) labelled(line []byte) []byte {
	if len(u.cfg.Labels) == 0 {
		return bytes.Clone(line)
	}
	var event map[string]json.RawMessage
	if err := json.Unmarshal(line, &event); err != nil {
		return bytes.Clone(line)
	}
	labels := map[string]string{}
	for k, v := range u.cfg.Labels {
		labels[k] = v
	}
	if own, ok := event["labels"]; ok {
		json.Unmarshal(own, &labels) // OPA's labels are strings; anything else leaves the configured ones
	}
	raw, err := json.Marshal(labels)
	if err != nil {
		return bytes.Clone(line)
	}
	event["labels"] = raw
	out, err := json.Marshal(event)
	if err != nil {
		return bytes.Clone(line)
	}
	return out
}

// Close stops the loop, makes a last upload of what is buffered within
// ctx (as OPA flushes at shutdown), and counts what is still unsent as
// dropped with reason "upload_unsent", returning the upload's error.
// Later calls do nothing.
func (u *Uploader) Close(ctx context.Context) error {
	var err error
	u.once.Do(func() {
		close(u.stop)
		u.cancel()
		<-u.done
		err = u.upload(ctx)
		u.mu.Lock()
		unsent := len(u.buf.take())
		u.mu.Unlock()
		u.metrics.buffered.Set(0)
		u.metrics.dropped(DropUnsent, unsent)
		if unsent > 0 {
			u.log.Warn("decision-log events not uploaded before stopping", "events", unsent, "error", err)
		}
	})
	return err
}

// run uploads every MinDelay to MaxDelay (at random, as OPA), and after a
// failure backs off from 100 ms to MaxDelay, retrying what failed first.
func (u *Uploader) run(ctx context.Context) {
	defer close(u.done)
	retries := 0
	for {
		timer := time.NewTimer(u.delay(retries))
		select {
		case <-u.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		if err := u.upload(ctx); err != nil {
			retries++
			u.log.Warn("decision-log upload failed; its events stay buffered and are retried", "retry", retries, "error", err)
			continue
		}
		retries = 0
	}
}

func (u *Uploader) delay(retries int) time.Duration {
	if retries > 0 {
		return util.DefaultBackoff(float64(minRetryDelay), float64(u.cfg.MaxDelay), retries)
	}
	spread := u.cfg.MaxDelay - u.cfg.MinDelay
	return u.cfg.MinDelay + time.Duration(rand.Int64N(int64(spread)+1))
}

// upload sends everything buffered, in chunks within the upload limit, in
// order; at the first failure the events of that chunk and of the chunks
// after it go back to the front of the buffer.
func (u *Uploader) upload(ctx context.Context) error {
	u.mu.Lock()
	events := u.buf.take()
	u.mu.Unlock()
	if len(events) == 0 {
		return nil
	}
	cs, tooLarge := chunks(events, u.cfg.UploadLimitBytes)
	if tooLarge > 0 {
		u.metrics.dropped(DropTooLarge, tooLarge)
		u.log.Warn("decision-log events larger than the upload limit dropped", "events", tooLarge, "upload_size_limit_bytes", u.cfg.UploadLimitBytes)
	}
	for i, c := range cs {
		if err := u.post(ctx, c.body); err != nil {
			u.metrics.failures.Inc()
			var unsent [][]byte
			for _, c := range cs[i:] {
				unsent = append(unsent, c.events...)
			}
			u.mu.Lock()
			dropped := u.buf.requeue(unsent)
			n := len(u.buf.events)
			u.mu.Unlock()
			u.metrics.buffered.Set(float64(n))
			u.metrics.dropped(DropBufferFull, dropped)
			return err
		}
		u.metrics.uploaded.Add(float64(len(c.events)))
	}
	u.mu.Lock()
	n := len(u.buf.events)
	u.mu.Unlock()
	u.metrics.buffered.Set(float64(n))
	return nil
}

// post sends one chunk as OPA's logs plugin does.
func (u *Uploader) post(ctx context.Context, body []byte) error {
	resp, err := u.client.
		WithHeader("Content-Type", "application/json").
		WithHeader("Content-Encoding", "gzip").
		WithBytes(body).
		Do(ctx, "POST", u.cfg.Resource)
	if err != nil {
		return fmt.Errorf("decisionlogs: upload: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return fmt.Errorf("decisionlogs: upload: the service answered %s", resp.Status)
	}
	return nil
}

// bucket is a token bucket of max(1, rate) tokens gaining rate a second,
// as OPA's limiter for max_decisions_per_second.
type bucket struct {
	rate, tokens, burst float64
	last                time.Time
}

func newBucket(rate float64, now time.Time) *bucket {
	burst := max(1, rate)
	return &bucket{rate: rate, tokens: burst, burst: burst, last: now}
}

func (b *bucket) take(now time.Time) bool {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
