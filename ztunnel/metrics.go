package ztunnel

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/hbone"
)

// Reporter says which side of the connection a metric comes from.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// tcpLabels are Istio's standard TCP metric labels, so existing dashboards
// work unchanged.
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service", "request_protocol", "response_flags", "connection_security_policy",
}

// labelValues are the report's values of tcpLabels.
func (r *report) labelValues() []string {
	security := "none"
	if r.mtls {
		security = "mutual_tls"
	}
	return []string{
		r.reporter,
		orUnknown(r.src.workload), orUnknown(r.src.namespace), orUnknown(r.src.principal),
		orUnknown(r.dst.workload), orUnknown(r.dst.namespace), orUnknown(r.dst.principal),
		orUnknown(r.service), "tcp", string(r.flag), security,
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Metrics are ztunnel's Prometheus collectors.
type Metrics struct {
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
	refused  *prometheus.CounterVec
}

// NewMetrics registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened.",
		}, tcpLabels),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed.",
		}, tcpLabels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent to the client (the connection's downstream) during the connection.",
		}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total", Help: "Bytes received from the client during the connection.",
		}, tcpLabels),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "regomesh", Subsystem: "hbone", Name: "refused_total",
			Help: "What the HBONE servers (port 15008) refused clients under their limits, by reason: " +
				"handshakes_per_ip, handshakes (oldest handshake dropped), conns_per_peer, conns, " +
				"window_budget (a smaller receive window), rapid_reset (GOAWAY ENHANCE_YOUR_CALM).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.refused)
	}
	return m
}

// reportOpened counts a connection as it opens (and a refused one, with its
// flag).
func (m *Metrics) reportOpened(r *report) {
	if m != nil {
		m.opened.WithLabelValues(r.labelValues()...).Inc()
	}
}

// reportClosed counts a connection as it closes, with its byte counts: sent is
// what went back to the client, received what came from it.
func (m *Metrics) reportClosed(r *report) {
	if m == nil {
		return
	}
	v := r.labelValues()
	m.closed.WithLabelValues(v...).Inc()
	m.sent.WithLabelValues(v...).Add(float64(r.sent))
	m.received.WithLabelValues(v...).Add(float64(r.received))
}

// HBONERefused counts a refusal of an HBONE server; it is
// hbone.ConnConfig.OnRefuse.
func (m *Metrics) HBONERefused(r hbone.Refusal) {
	if m != nil {
		m.refused.WithLabelValues(string(r)).Inc()
	}
}
