package policy

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// evalBuckets suit decisions that cost microseconds: a compiled L4 decision
// lands in the first buckets, a topdown fallback in the tens of
// microseconds, and anything near the last bucket is worth investigating.
var evalBuckets = []float64{
	500e-9, 1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6,
	100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3,
}

// Metrics are the engine's Prometheus collectors:
//
//   - regomesh_policy_decisions_total{layer,decision,policy}: decisions by
//     layer ("l4", "l7"), outcome ("allow", "deny") and deciding policy
//     (empty when no single policy decided), cached decisions included;
//   - regomesh_policy_eval_seconds{layer}: time spent evaluating decisions
//     that were not served from the L4 decision cache;
//   - regomesh_policy_bundle_loads_total{result}: bundle loads by result
//     ("success", "failure");
//   - regomesh_policy_no_policy_refusals_total: bundle sets refused because
//     they would remove every policy package in force (an emptied bundle
//     directory, most likely); the previous set stays in force;
//   - regomesh_policy_bundle_info{bundle,revision}: 1 for each bundle in
//     force, labelled with its revision;
//   - regomesh_policy_shadow_disagreements_total{layer,policy,rule,shadow_policy,shadow_rule}:
//     decisions where the shadow bundle set disagreed with the enforced one
//     on allow, by the policy and rule that decided in force and those that
//     decided in the shadow set ("" where none did: no policy applies, or
//     ALLOW policies apply and none matched);
//   - regomesh_policy_decision_log_dropped_total{reason}: decision-log events
//     lost ("rate_limited", "buffer_full", "encode_error", "write_error",
//     "mask_error": data.system.log.mask failed, so the event was not written);
//     events left out by sampling are not counted.
//
// A nil *Metrics is valid and records nothing. All methods are safe for
// concurrent use.
type Metrics struct {
	decisions   *prometheus.CounterVec
	evalSeconds *evalHistogram
	bundleLoads *prometheus.CounterVec
	noPolicy    prometheus.Counter
	bundleInfo  *prometheus.GaugeVec
	shadow      *prometheus.CounterVec
	logDropped  *prometheus.CounterVec

	// The children of each known layer, resolved for the hot path.
	l4, l7 layerMetrics

	// Children for the label values known in advance, resolved (and so
	// exported as 0) from the start, which keeps rate() queries defined.
	loadSuccess, loadFailure prometheus.Counter
	droppedRateLimited       prometheus.Counter
	droppedBufferFull        prometheus.Counter

	// revisionsMu guards revisions, the bundle -> revision set whose
	// bundle_info series currently exist.
	revisionsMu sync.Mutex
	revisions   map[string]string
}

// layerMetrics holds one layer's children of the decision metrics, so the
// hot path finds a counter by the policy name alone, most often without
// a lookup at all (see outcomeCounters). Every counter in allow (deny) is
// decisions.WithLabelValues(layer, "allow" ("deny"), policy).
type layerMetrics struct {
	layer Layer
	eval  *evalCounts
	allow outcomeCounters
	deny  outcomeCounters
}

// outcomeCounters are the decisions counters of one layer and outcome, by
// deciding policy. last is the counter of the policy that decided last:
// a proxy's decisions mostly come from the same few policies, and the
// engine's native program hands out each rule's policy name from its
// compiled entry, so a repeat costs a comparison of two strings with the
// same bytes (their pointers, first) instead of hashing the name into
// byPolicy. Neither allocates once a policy has been seen.
type outcomeCounters struct {
	last     atomic.Pointer[policyCounter]
	byPolicy sync.Map // policy -> *policyCounter
}

// policyCounter is the decisions counter of one policy.
type policyCounter struct {
	policy  string
	counter prometheus.Counter
}

// NewMetrics creates the engine's collectors and registers them on reg.
// With a nil reg they are not registered but still count, which suits
// tests and tools that read them directly. Collectors that reg already
// holds (a second engine in the same process) are shared rather than
// registered twice. NewMetrics panics if reg holds a different collector
// under one of these names, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		decisions:   newCounterVec("decisions_total", "Policy decisions by layer, outcome and deciding policy, cached decisions included.", "layer", "decision", "policy"),
		evalSeconds: newEvalHistogram(),
		bundleLoads: newCounterVec("bundle_loads_total", "Policy bundle loads by result (success, failure).", "result"),
		noPolicy:    newCounter("no_policy_refusals_total", "Bundle sets refused because they would remove every policy package in force; the previous set stays in force."),
		bundleInfo:  newGaugeVec("bundle_info", "Policy bundles in force, by name and revision; always 1.", "bundle", "revision"),
		shadow:      newCounterVec("shadow_disagreements_total", "Decisions where the shadow bundle set disagreed with the enforced one on allow, by the deciding policy and rule in force and in the shadow set.", "layer", "policy", "rule", "shadow_policy", "shadow_rule"),
		logDropped:  newCounterVec("decision_log_dropped_total", "Decision-log events lost, by reason; sampling is not counted.", "reason"),
	}
	if reg != nil {
		m.decisions = registerOrReuse(reg, m.decisions)
		m.evalSeconds = registerOrReuse(reg, m.evalSeconds)
		m.bundleLoads = registerOrReuse(reg, m.bundleLoads)
		m.noPolicy = registerOrReuse(reg, m.noPolicy)
		m.bundleInfo = registerOrReuse(reg, m.bundleInfo)
		m.shadow = registerOrReuse(reg, m.shadow)
		m.logDropped = registerOrReuse(reg, m.logDropped)
	}
	m.l4.init(L4, &m.evalSeconds.layers[0])
	m.l7.init(L7, &m.evalSeconds.layers[1])
	m.loadSuccess = m.bundleLoads.WithLabelValues("success")
	m.loadFailure = m.bundleLoads.WithLabelValues("failure")
	m.droppedRateLimited = m.logDropped.WithLabelValues(dropRateLimited)
	m.droppedBufferFull = m.logDropped.WithLabelValues(dropBufferFull)
	return m
}

func newCounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "regomesh", Subsystem: "policy", Name: name, Help: help,
	}, labels)
}

func newCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "regomesh", Subsystem: "policy", Name: name, Help: help,
	})
}

func newGaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "regomesh", Subsystem: "policy", Name: name, Help: help,
	}, labels)
}

func newEvalHistogram() *evalHistogram {
	h := &evalHistogram{desc: prometheus.NewDesc("regomesh_policy_eval_seconds",
		"Time spent evaluating policy decisions not served from the decision cache.", []string{"layer"}, nil)}
	for i := range h.layers {
		h.layers[i].buckets = make([]atomic.Uint64, len(evalBuckets)+1)
	}
	return h
}

// evalHistogram is regomesh_policy_eval_seconds{layer}, the evaluation
// times of the two layers, made for the decision path: an observation is
// two atomic additions (its bucket, and the sum in nanoseconds) where
// client_golang's histogram makes four, one a compare-and-swap loop on a
// float sum. The count a scrape reads is the total of the buckets it
// read, so that they always agree.
type evalHistogram struct {
	desc   *prometheus.Desc
	layers [2]evalCounts // l4, l7
}

var _ prometheus.Collector = (*evalHistogram)(nil)

// evalCounts are one layer's observations.
type evalCounts struct {
	buckets  []atomic.Uint64 // by evalBuckets, not cumulative; the last counts what is above them all
	sumNanos atomic.Uint64
}

func (c *evalCounts) observe(seconds float64) {
	i := 0
	for i < len(evalBuckets) && seconds > evalBuckets[i] {
		i++
	}
	c.buckets[i].Add(1)
	c.sumNanos.Add(uint64(math.Round(max(seconds, 0) * 1e9)))
}

func (h *evalHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *evalHistogram) Collect(ch chan<- prometheus.Metric) {
	for i, layer := range [...]Layer{L4, L7} {
		c := &h.layers[i]
		var count uint64
		cumulative := make(map[float64]uint64, len(evalBuckets))
		for j, bound := range evalBuckets {
			count += c.buckets[j].Load()
			cumulative[bound] = count
		}
		count += c.buckets[len(evalBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(h.desc, count, float64(c.sumNanos.Load())/1e9, cumulative, string(layer))
	}
}

// registerOrReuse registers c on reg, or returns the collector reg already holds
// under the same descriptor.
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(err)
}

func (lm *layerMetrics) init(layer Layer, eval *evalCounts) {
	lm.layer = layer
	lm.eval = eval
}

// observeDecision counts one evaluated decision and its evaluation time.
// It is on the hot path: once a (layer, outcome, policy) combination has
// been seen it does not allocate, and it hashes the policy name only when
// another policy decided the layer's last decision of that outcome.
func (m *Metrics) observeDecision(layer Layer, d Decision, seconds float64) {
	if m == nil {
		return
	}
	lm := m.forLayer(layer)
	if lm == nil {
		m.decisions.WithLabelValues(string(layer), decisionLabel(d.Allow), d.Policy).Inc()
		return
	}
	lm.counter(m.decisions, d).Inc()
	lm.eval.observe(seconds)
}

// observeCacheHit counts a decision served from the L4 decision cache; it
// took no evaluation, so the eval histogram is left alone.
func (m *Metrics) observeCacheHit(layer Layer, d Decision) {
	if m == nil {
		return
	}
	lm := m.forLayer(layer)
	if lm == nil {
		m.decisions.WithLabelValues(string(layer), decisionLabel(d.Allow), d.Policy).Inc()
		return
	}
	lm.counter(m.decisions, d).Inc()
}

// forLayer returns the resolved children of layer, nil for a layer that is
// neither l4 nor l7 (which Input.Prepare rejects).
func (m *Metrics) forLayer(layer Layer) *layerMetrics {
	switch layer {
	case L4:
		return &m.l4
	case L7:
		return &m.l7
	}
	return nil
}

// counter returns the decisions child for d, resolving it on first use.
func (lm *layerMetrics) counter(decisions *prometheus.CounterVec, d Decision) prometheus.Counter {
	oc := &lm.deny
	if d.Allow {
		oc = &lm.allow
	}
	if pc := oc.last.Load(); pc != nil && pc.policy == d.Policy {
		return pc.counter
	}
	pc := oc.lookup(decisions, lm.layer, d)
	oc.last.Store(pc)
	return pc.counter
}

// lookup finds the counter of d's policy in byPolicy, resolving it on
// first use.
func (oc *outcomeCounters) lookup(decisions *prometheus.CounterVec, layer Layer, d Decision) *policyCounter {
	if pc, ok := oc.byPolicy.Load(d.Policy); ok {
		return pc.(*policyCounter)
	}
	pc := &policyCounter{policy: d.Policy, counter: decisions.WithLabelValues(string(layer), decisionLabel(d.Allow), d.Policy)}
	actual, _ := oc.byPolicy.LoadOrStore(d.Policy, pc)
	return actual.(*policyCounter)
}

func decisionLabel(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// bundleLoad counts one bundle load attempt.
func (m *Metrics) bundleLoad(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.loadSuccess.Inc()
		return
	}
	m.loadFailure.Inc()
}

// noPolicyRefused counts a bundle set refused because it would remove
// every policy package in force.
func (m *Metrics) noPolicyRefused() {
	if m == nil {
		return
	}
	m.noPolicy.Inc()
}

// setRevisions records the bundles now in force (name -> revision),
// replacing the previous set: series of bundles or revisions no longer in
// force are deleted.
func (m *Metrics) setRevisions(revisions map[string]string) {
	if m == nil {
		return
	}
	m.revisionsMu.Lock()
	defer m.revisionsMu.Unlock()
	for name, rev := range m.revisions {
		if newRev, ok := revisions[name]; !ok || newRev != rev {
			m.bundleInfo.DeleteLabelValues(name, rev)
		}
	}
	current := make(map[string]string, len(revisions))
	for name, rev := range revisions {
		m.bundleInfo.WithLabelValues(name, rev).Set(1)
		current[name] = rev
	}
	m.revisions = current
}

// shadowDisagreement counts a decision where the shadow bundle set
// disagreed with the enforced one.
func (m *Metrics) shadowDisagreement(layer Layer, enforced, shadow Decision) {
	if m == nil {
		return
	}
	m.shadow.WithLabelValues(string(layer), enforced.Policy, enforced.Rule, shadow.Policy, shadow.Rule).Inc()
}

// decisionLogDropped counts one decision-log event lost for reason.
func (m *Metrics) decisionLogDropped(reason string) {
	if m == nil {
		return
	}
	switch reason {
	case dropRateLimited:
		m.droppedRateLimited.Inc()
	case dropBufferFull:
		m.droppedBufferFull.Inc()
	default:
		m.logDropped.WithLabelValues(reason).Inc()
	}
}
