package waypoint

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Reporter is the reporter label of every waypoint metric, as Istio's
// waypoints report.
const Reporter = "waypoint"

// requestLabels are Istio's standard request metric labels, so existing
// dashboards work unchanged.
var requestLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// Istio's default buckets: milliseconds, and bytes by powers of ten.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets     = prometheus.ExponentialBuckets(1, 10, 9)
)

// Metrics are the waypoint's request collectors: istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes and
// istio_response_bytes (byte sizes count bodies); and its retries,
// regomesh_waypoint_retries_total and
// regomesh_waypoint_retry_overflow_total.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	reqBytes *prometheus.HistogramVec
	resBytes *prometheus.HistogramVec
	retries  *prometheus.CounterVec
	overflow *prometheus.CounterVec
}

// NewMetrics registers the collectors on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests the waypoint answered or forwarded.",
		}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Time from the request's arrival to the end of its response.", Buckets: durationBuckets,
		}, requestLabels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request body sizes.", Buckets: sizeBuckets,
		}, requestLabels),
		resBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response body sizes.", Buckets: sizeBuckets,
		}, requestLabels),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regomesh_waypoint_retries_total", Help: "Retries made, by destination service and the retryOn condition the failed attempt met.",
		}, []string{"destination_service", "reason"}),
		overflow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regomesh_waypoint_retry_overflow_total", Help: "Retries the retry budget refused (Envoy's upstream_rq_retry_overflow): the last attempt's answer went to the client.",
		}, []string{"destination_service"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.reqBytes, m.resBytes, m.retries, m.overflow)
	}
	return m
}

// retried counts a retry of x after an attempt that met reason.
func (m *Metrics) retried(x *exchange, reason string) {
	if m != nil {
		m.retries.WithLabelValues(x.budgetKey(), reason).Inc()
	}
}

// retryRefused counts a retry of x the budget refused.
func (m *Metrics) retryRefused(x *exchange) {
	if m != nil {
		m.overflow.WithLabelValues(x.budgetKey()).Inc()
	}
}

// record counts one finished request.
func (m *Metrics) record(x *exchange) {
	if m == nil {
		return
	}
	v := x.labels()
	m.requests.WithLabelValues(v...).Inc()
	m.duration.WithLabelValues(v...).Observe(float64(x.duration().Microseconds()) / 1000)
	m.reqBytes.WithLabelValues(v...).Observe(float64(x.reqBytes))
	m.resBytes.WithLabelValues(v...).Observe(float64(x.respBytes))
}

func (x *exchange) labels() []string {
	srcWL, srcNS := "", ""
	if x.source != nil {
		srcWL, srcNS = x.source.Name, x.source.Namespace
	}
	dstWL, dstNS, dstID := "", "", ""
	if x.endpoint != nil {
		dstWL, dstNS, dstID = x.endpoint.Name, x.endpoint.Namespace, x.endpoint.Identity()
	}
	svc, svcName, svcNS := "", "", ""
	if s := x.target.Service; s != nil {
		svc, svcName, svcNS = s.Hostname, s.Name, s.Namespace
	}
	proto := "http"
	if x.grpc {
		proto = "grpc"
	}
	security := "none"
	if x.peer.Principal != "" {
		security = "mutual_tls"
	}
	return []string{
		Reporter,
		orUnknown(srcWL), orUnknown(srcNS), orUnknown(x.peer.Principal),
		orUnknown(dstWL), orUnknown(dstNS), orUnknown(dstID),
		orUnknown(svc), orUnknown(svcName), orUnknown(svcNS),
		proto, strconv.Itoa(x.status), orDash(x.grpcStatus), orDash(x.flags), security,
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
