package opabundles

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Failure reasons, the reason label of regomesh_policy_remote_bundle_failures_total.
const (
	// reasonDownload: the request failed or the server answered an error
	// status; nothing was read.
	reasonDownload = "download"
	// reasonBundle: OPA's reader refused what was downloaded: a signature
	// missing or not verifying, a file that does not parse, a size limit.
	reasonBundle = "bundle"
	// reasonActivation: the bundle was read and verified, but regomesh
	// refused it or the set with it did not compile (the engine's checks:
	// library ownership, empty bundles, roots, Rego errors, no policy).
	reasonActivation = "activation"
)

// Metrics are the Prometheus collectors of a Set's remote bundles:
//
//   - regomesh_policy_remote_bundle_activations_total{bundle}: revisions of
//     the bundle that became part of the set in force;
//   - regomesh_policy_remote_bundle_failures_total{bundle,reason}:
//     downloads that did not change the bundle in force, by reason:
//     "download" (no answer, or an error status), "bundle" (OPA's reader
//     refused it: signature, parse error, size) or "activation" (the
//     engine refused it or the set with it);
//   - regomesh_policy_remote_bundle_not_modified_total{bundle}: answers
//     that the copy in force is current (304 Not Modified);
//   - regomesh_policy_remote_bundles_ready: 1 once every configured bundle
//     has been activated (readiness), 0 before.
//
// The engine's own regomesh_policy_bundle_loads_total and
// regomesh_policy_bundle_info count every set loaded and show the
// revisions in force. A nil *Metrics records nothing.
type Metrics struct {
	activations *prometheus.CounterVec
	failures    *prometheus.CounterVec
	notModified *prometheus.CounterVec
	ready       prometheus.Gauge
}

// NewMetrics creates the collectors and registers them on reg; with a nil
// reg they count without being registered. A second Metrics on the same
// registry shares the first one's collectors.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		activations: counterVec("activations_total", "Revisions of each remote bundle that became part of the policy in force.", "bundle"),
		failures:    counterVec("failures_total", "Remote bundle downloads that did not change the bundle in force, by reason (download, bundle, activation).", "bundle", "reason"),
		notModified: counterVec("not_modified_total", "Answers that a remote bundle in force is current (304 Not Modified).", "bundle"),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "regomesh", Subsystem: "policy", Name: "remote_bundles_ready",
			Help: "1 once every remote bundle has been activated, 0 before: until then every decision denies."}),
	}
	if reg != nil {
		m.activations = registerOrReuse(reg, m.activations)
		m.failures = registerOrReuse(reg, m.failures)
		m.notModified = registerOrReuse(reg, m.notModified)
		m.ready = registerOrReuse(reg, m.ready)
	}
	return m
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "regomesh", Subsystem: "policy", Name: "remote_bundle_" + name, Help: help,
	}, labels)
}

func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	var already prometheus.AlreadyRegisteredError
	switch {
	case err == nil:
		return c
	case errors.As(err, &already):
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(err)
}

// expose creates the series of bundle at 0, so rate() is defined before
// its first event.
func (m *Metrics) expose(bundle string) {
	if m == nil {
		return
	}
	m.activations.WithLabelValues(bundle)
	m.notModified.WithLabelValues(bundle)
	for _, r := range []string{reasonDownload, reasonBundle, reasonActivation} {
		m.failures.WithLabelValues(bundle, r)
	}
}

func (m *Metrics) activated(bundle string) {
	if m != nil {
		m.activations.WithLabelValues(bundle).Inc()
	}
}

func (m *Metrics) failed(bundle, reason string) {
	if m != nil {
		m.failures.WithLabelValues(bundle, reason).Inc()
	}
}

func (m *Metrics) unchanged(bundle string) {
	if m != nil {
		m.notModified.WithLabelValues(bundle).Inc()
	}
}

func (m *Metrics) setReady(ready bool) {
	if m == nil {
		return
	}
	if ready {
		m.ready.Set(1)
		return
	}
	m.ready.Set(0)
}
