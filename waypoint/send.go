package waypoint

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// send forwards r to x's endpoint: once, or, under the rule's retry
// policy (Istio's default policy where no rule writes one), again after a
// failed attempt while attempts are left, the body can be replayed and
// the retry budget allows, each retry on another endpoint than those
// tried when the service has one. The response or error returned is the
// last attempt's.
func (w *Waypoint) send(rt http.RoundTripper, r *http.Request, x *exchange) (*http.Response, error) {
	p := x.rule.retryPolicy()
	if p == nil {
		x.attempts = 1
		r.Header.Set(attemptCountHeader, "1")
		return rt.RoundTrip(r)
	}
	a := &attempts{w: w, x: x, p: p, r: r, body: newRetryBody(r, w.cfg.RetryBufferBytes)}
	defer a.releaseRetry() // also when the client leaves during a backoff
	for {
		resp, cancel, err := a.try(rt)
		reason := a.retryable(resp, err)
		if reason == "" {
			return withCancel(resp, cancel, p.perTry > 0), err
		}
		discard(resp)
		cancel()
		if err := a.next(reason); err != nil {
			return nil, err
		}
	}
}

// attempts are the attempts of one request under a retry policy.
type attempts struct {
	w     *Waypoint
	x     *exchange
	p     *retryPolicy
	r     *http.Request
	body  *retryBody
	tried []*state.Workload // the endpoints that failed an attempt
}

// try makes the next attempt; an attempt without an answer within the
// per-try timeout fails with a perTryTimeoutError.
func (a *attempts) try(rt http.RoundTripper) (*http.Response, context.CancelFunc, error) {
	a.x.attempts++
	req, cancel := attemptRequest(a.r, a.x, a.p, a.body)
	resp, err := rt.RoundTrip(req)
	if err != nil && a.r.Context().Err() == nil && errors.Is(req.Context().Err(), context.DeadlineExceeded) {
		err = &perTryTimeoutError{timeout: a.p.perTry, err: err}
	}
	a.releaseRetry()
	return resp, cancel, err
}

// retryable is the retryOn condition that sends the request again after
// this outcome, having taken a retry from the budget; "" when the outcome
// stands: no condition met, no attempt left (URX), a body that cannot be
// replayed, or a budget spent.
func (a *attempts) retryable(resp *http.Response, err error) string {
	reason := a.p.reason(a.r.Context(), resp, err)
	switch {
	case reason == "":
		return ""
	case a.x.attempts > a.p.retries:
		a.x.exhausted = a.p.retries > 0
		return ""
	case !a.body.replayable():
		return ""
	case !a.w.budget.acquire(a.x.budgetKey(), a.w.lb.inFlight(a.x.balanced)):
		a.w.cfg.Metrics.retryRefused(a.x)
		return ""
	}
	a.x.retryHeld = true
	return reason
}

// next readies the retry: the failed endpoint's health counts the
// failure, the backoff passes, and another endpoint is chosen.
func (a *attempts) next(reason string) error {
	x := a.x
	a.tried = append(a.tried, x.endpoint)
	if x.balanced != nil {
		a.w.lb.done(x.endpoint, x.balanced, true)
		x.balanced = nil
	}
	a.w.cfg.Metrics.retried(x, reason)
	if err := sleep(a.r.Context(), a.p.backoffFor(x.attempts)); err != nil {
		return err
	}
	if x.dest.Service == nil {
		return nil // a workload addressed: the same again
	}
	var avoid []*state.Workload
	if a.p.previousHosts {
		avoid = a.tried
	}
	return a.w.pickFrom(a.w.state.Load(), x, avoid)
}

// releaseRetry gives back the retry the attempt in flight held.
func (a *attempts) releaseRetry() {
	if a.x.retryHeld {
		a.w.budget.release(a.x.budgetKey())
		a.x.retryHeld = false
	}
}

// attemptRequest is r for x's attempt in flight, to its endpoint, with its
// number, its body, and its per-try timeout. The first attempt is r itself
// (the proxy's own copy of the client's request), so that a request sent
// once, as most are under the default policy, is not copied; a retry gets
// a copy, since the transport of a failed attempt may still read r.
func attemptRequest(r *http.Request, x *exchange, p *retryPolicy, body *retryBody) (*http.Request, context.CancelFunc) {
	ctx, cancel := r.Context(), context.CancelFunc(func() {})
	if p.perTry > 0 {
		ctx, cancel = context.WithTimeout(ctx, p.perTry)
	}
	req := r
	switch {
	case x.attempts > 1:
		req = r.Clone(ctx)
	case p.perTry > 0:
		req = r.WithContext(ctx)
	}
	req.URL.Host = x.upstream.String()
	req.Header.Set(attemptCountHeader, strconv.Itoa(x.attempts))
	req.Body = body.forAttempt(x.attempts)
	return req, cancel
}

// withCancel hands the attempt's per-try context to its response body,
// which the proxy closes when the response is done.
func withCancel(resp *http.Response, cancel context.CancelFunc, perTry bool) *http.Response {
	if resp == nil || !perTry || resp.StatusCode == http.StatusSwitchingProtocols {
		cancel()
		return resp
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp
}

// discard drops a failed attempt's response, reading a little of it so
// that its connection can serve again.
func discard(resp *http.Response) {
	if resp == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryBody keeps a request body for retries: read whole before the
// first attempt when its declared length fits the buffer, else kept as
// the first attempt reads it. A retry replays it only when every byte
// read is kept and the client has sent it all; otherwise the request is
// not retried (a body cannot be asked for twice).
type retryBody struct {
	src   io.ReadCloser // nil: no body
	limit int

	mu       sync.Mutex
	buf      []byte
	eof      bool
	overflow bool
	err      error // reading the body ahead failed
}

func newRetryBody(r *http.Request, limit int) *retryBody {
	if r.Body == nil || r.Body == http.NoBody {
		return &retryBody{eof: true}
	}
	b := &retryBody{src: r.Body, limit: limit}
	if r.ContentLength > 0 && r.ContentLength <= int64(limit) {
		b.buf, b.err = io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
		b.eof = b.err == nil
	}
	return b
}

// forAttempt is the body of the n-th attempt (from 1).
func (b *retryBody) forAttempt(n int) io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.src == nil:
		return nil
	case b.err != nil:
		return io.NopCloser(&errReader{b.err})
	case b.eof || n > 1:
		return io.NopCloser(bytes.NewReader(b.buf))
	}
	return &teeBody{b}
}

// replayable says whether the body can be sent again whole.
func (b *retryBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.src == nil || (b.eof && !b.overflow && b.err == nil)
}

// teeBody is the first attempt's body, kept as it is read. Closing it
// leaves the client's body to the server.
type teeBody struct{ b *retryBody }

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.b.src.Read(p)
	t.b.mu.Lock()
	defer t.b.mu.Unlock()
	if !t.b.overflow {
		if len(t.b.buf)+n > t.b.limit {
			t.b.overflow, t.b.buf = true, nil
		} else {
			t.b.buf = append(t.b.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		t.b.eof = true
	}
	return n, err
}

func (t *teeBody) Close() error { return nil }

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// cancelBody ends an attempt's per-try context with its response body.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// retryBudget bounds retries in flight per destination to a share of its
// requests in flight, with a floor, as Envoy's retry budget does, so
// that a failing backend is not met with a storm of retries.
type retryBudget struct {
	percent        float64
	minConcurrency int

	mu       sync.Mutex
	inFlight map[string]int // retries in flight, by destination
}

func newRetryBudget(percent float64, minConcurrency int) *retryBudget {
	return &retryBudget{percent: percent, minConcurrency: minConcurrency, inFlight: map[string]int{}}
}

// acquire takes one retry for dest, which has requests in flight; false
// when the budget has none left. release must follow a true.
func (b *retryBudget) acquire(dest string, requests int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := max(float64(b.minConcurrency), b.percent/100*float64(requests))
	if float64(b.inFlight[dest]+1) > limit {
		return false
	}
	b.inFlight[dest]++
	return true
}

func (b *retryBudget) release(dest string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inFlight[dest]--; b.inFlight[dest] <= 0 {
		delete(b.inFlight, dest)
	}
}
