package policy

import (
	"errors"
	"sync"

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
	evalSeconds *prometheus.HistogramVec
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
// hot path finds a counter with one lookup keyed by the policy name alone
// (hashing a string is several times cheaper than hashing a struct of
// label values). Every counter in allow (deny) is
// decisions.WithLabelValues(layer, "allow" ("deny"), policy).
type layerMetrics struct {
	layer Layer
	eval  prometheus.Observer
	allow sync.Map // policy -> prometheus.Counter
	deny  sync.Map // policy -> prometheus.Counter
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
	m.l4.init(L4, m.evalSeconds)
	m.l7.init(L7, m.evalSeconds)
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

func newEvalHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "regomesh", Subsystem: "policy", Name: "eval_seconds",
		Help:    "Time spent evaluating policy decisions not served from the decision cache.",
		Buckets: evalBuckets,
	}, []string{"layer"})
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

func (lm *layerMetrics) init(layer Layer, eval *prometheus.HistogramVec) {
	lm.layer = layer
	lm.eval = eval.WithLabelValues(string(layer))
}

// observeDecision counts one evaluated decision and its evaluation time.
// It is on the hot path: once a (layer, outcome, policy) combination has
// been seen it does not allocate and hashes only the policy name.
func (m *Metrics) observeDecision(layer Layer, d Decision, seconds float64) {
	if m == nil {
		return
	}
	lm := m.forLayer(layer)
	if lm == nil {
		m.decisions.WithLabelValues(string(layer), decisionLabel(d.Allow), d.Policy).Inc()
		m.evalSeconds.WithLabelValues(string(layer)).Observe(seconds)
		return
	}
	lm.counter(m.decisions, d).Inc()
	lm.eval.Observe(seconds)
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
	byPolicy := &lm.deny
	if d.Allow {
		byPolicy = &lm.allow
	}
	if c, ok := byPolicy.Load(d.Policy); ok {
		return c.(prometheus.Counter)
	}
	c := decisions.WithLabelValues(string(lm.layer), decisionLabel(d.Allow), d.Policy)
	actual, _ := byPolicy.LoadOrStore(d.Policy, c)
	return actual.(prometheus.Counter)
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
