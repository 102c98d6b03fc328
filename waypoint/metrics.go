package waypoint

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/internal/istiometrics"
	"github.com/regomesh/regomesh/ztunnel/state"
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

// tcpLabels are Istio's standard TCP metric labels: the request labels
// without the response's, as ztunnel reports them (with the destination
// service's name and namespace, which ztunnel leaves out).
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Istio's default buckets: milliseconds, and bytes by powers of ten.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets     = prometheus.ExponentialBuckets(1, 10, 9)
)

// Metrics are the waypoint's request collectors: istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes and
// istio_response_bytes (byte sizes count bodies); the TCP collectors of
// the connections it relays as TCP, istio_tcp_connections_opened_total,
// istio_tcp_connections_closed_total, istio_tcp_sent_bytes_total and
// istio_tcp_received_bytes_total; and its retries,
// regomesh_waypoint_retries_total and
// regomesh_waypoint_retry_overflow_total.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	reqBytes *prometheus.HistogramVec
	resBytes *prometheus.HistogramVec
	retries  *prometheus.CounterVec
	overflow *prometheus.CounterVec

	tcp *istiometrics.TCP
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
		tcp: istiometrics.NewTCP(reg, tcpLabels),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.reqBytes, m.resBytes, m.retries, m.overflow)
	}
	return m
}

// tcpConnOpened counts a connection relayed as TCP as its upstream tunnel
// opens, or as it is refused (then with its flag), as ztunnel counts.
func (m *Metrics) tcpConnOpened(x *exchange) {
	if m != nil {
		m.tcp.Opened(x.tcpLabels())
	}
}

// tcpConnClosed counts a connection relayed as TCP as it ends, with its bytes:
// sent is what went back to the client, received what came from it.
func (m *Metrics) tcpConnClosed(x *exchange) {
	if m == nil {
		return
	}
	m.tcp.Closed(x.tcpLabels(), x.respBytes, x.reqBytes)
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
	s := m.seriesOf(x)
	s.requests.Inc()
	s.duration.Observe(float64(x.duration().Microseconds()) / 1000)
	s.reqBytes.Observe(float64(x.reqBytes))
	s.resBytes.Observe(float64(x.respBytes))
}

// requestSeries are the request metrics' children for one set of label
// values, and what those values are made from (seriesKey).
type requestSeries struct {
	m                            *Metrics
	key                          seriesKey
	requests                     prometheus.Counter
	duration, reqBytes, resBytes prometheus.Observer
}

// seriesKey is everything a request's label values are made from
// (exchange.labels): the state's objects, which a snapshot never changes,
// by pointer.
type seriesKey struct {
	source, endpoint  *state.Workload
	service           *state.Service
	principal         string
	grpc              bool
	status            int
	grpcStatus, flags string
}

// seriesOf is the children x counts in. A tunnel keeps the last ones it
// used (exchange.series): a kept-alive connection's requests mostly share
// their label values, and formatting fifteen of them and resolving four
// children by them was 3.9% of test/bench's waypoint CPU.
func (m *Metrics) seriesOf(x *exchange) *requestSeries {
	key := seriesKey{
		source: x.source, endpoint: x.endpoint, service: x.target.Service, principal: x.peer.Principal,
		grpc: x.grpc, status: x.status, grpcStatus: x.grpcStatus, flags: x.flags,
	}
	if x.series != nil {
		if s := x.series.Load(); s != nil && s.m == m && s.key == key {
			return s
		}
	}
	v := x.labels()
	s := &requestSeries{
		m: m, key: key,
		requests: m.requests.WithLabelValues(v...), duration: m.duration.WithLabelValues(v...),
		reqBytes: m.reqBytes.WithLabelValues(v...), resBytes: m.resBytes.WithLabelValues(v...),
	}
	if x.series != nil {
		x.series.Store(s)
	}
	return s
}

// labels are x's values of requestLabels.
func (x *exchange) labels() []string {
	proto := "http"
	if x.grpc {
		proto = "grpc"
	}
	v := x.appendPeers(make([]string, 0, len(requestLabels)))
	return append(v, proto, strconv.Itoa(x.status), orDash(x.grpcStatus), orDash(x.flags), x.security())
}

// tcpLabels are x's values of tcpLabels.
func (x *exchange) tcpLabels() []string {
	v := x.appendPeers(make([]string, 0, len(tcpLabels)))
	return append(v, "tcp", orDash(x.flags), x.security())
}

// appendPeers appends the values of the labels both sets begin with: the
// reporter, the source, the destination workload and service.
func (x *exchange) appendPeers(v []string) []string {
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
	return append(v,
		Reporter,
		orUnknown(srcWL), orUnknown(srcNS), orUnknown(x.peer.Principal),
		orUnknown(dstWL), orUnknown(dstNS), orUnknown(dstID),
		orUnknown(svc), orUnknown(svcName), orUnknown(svcNS),
	)
}

func (x *exchange) security() string {
	if x.peer.Principal != "" {
		return "mutual_tls"
	}
	return "none"
}

var orUnknown = istiometrics.OrUnknown

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
