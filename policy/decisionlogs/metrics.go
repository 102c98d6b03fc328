package decisionlogs

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons an event is lost on its way to the service, values of the reason
// label of regomesh_policy_decision_log_dropped_total, which the engine's
// own decision-log drops share.
const (
	DropBufferFull  = "upload_buffer_full"  // the buffer was full: the oldest events went
	DropTooLarge    = "upload_too_large"    // one event compresses past the upload limit
	DropRateLimited = "upload_rate_limited" // over max_decisions_per_second
	DropUnsent      = "upload_unsent"       // still buffered when the proxy stopped
)

// Metrics are the uploader's Prometheus collectors:
//
//   - regomesh_policy_decision_log_uploaded_total: events the service
//     accepted;
//   - regomesh_policy_decision_log_upload_failures_total: uploads (one
//     batch each) that failed, by no answer or a status other than 2xx;
//   - regomesh_policy_decision_log_upload_buffered: events waiting;
//
// and drops count in regomesh_policy_decision_log_dropped_total{reason}
// (policy.Metrics), with the reasons above.
type Metrics struct {
	uploaded prometheus.Counter
	failures prometheus.Counter
	buffered prometheus.Gauge
	dropped  func(reason string, n int)
}

// NewMetrics makes the collectors and registers them on reg (nil: not
// registered, still counting); drops go to dropped, normally
// policy.Metrics.DecisionLogDropped, and are not counted when it is nil.
func NewMetrics(reg prometheus.Registerer, dropped func(reason string, n int)) *Metrics {
	m := &Metrics{
		uploaded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "regomesh", Subsystem: "policy",
			Name: "decision_log_uploaded_total", Help: "Decision-log events the decision-log service accepted."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "regomesh", Subsystem: "policy",
			Name: "decision_log_upload_failures_total", Help: "Decision-log uploads that failed (no answer, or a status other than 2xx); their events are retried."}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "regomesh", Subsystem: "policy",
			Name: "decision_log_upload_buffered", Help: "Decision-log events waiting for upload."}),
		dropped: dropped,
	}
	if m.dropped == nil {
		m.dropped = func(string, int) {}
	}
	if reg != nil {
		m.uploaded = registerOrReuse(reg, m.uploaded)
		m.failures = registerOrReuse(reg, m.failures)
		m.buffered = registerOrReuse(reg, m.buffered)
	}
	return m
}

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
