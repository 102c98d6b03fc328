package ztunnel

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/istiometrics"
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

var orUnknown = istiometrics.OrUnknown

// Metrics are ztunnel's Prometheus collectors.
type Metrics struct {
	tcp     *istiometrics.TCP
	refused *prometheus.CounterVec
}

// NewMetrics registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tcp: istiometrics.NewTCP(reg, tcpLabels),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "regomesh", Subsystem: "hbone", Name: "refused_total",
			Help: "What the HBONE servers (port 15008) refused clients under their limits, by reason: " +
				"handshakes_per_ip, handshakes (oldest handshake dropped), conns_per_peer, conns, " +
				"window_budget (a smaller receive window), rapid_reset (GOAWAY ENHANCE_YOUR_CALM).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.refused)
	}
	return m
}

// reportOpened counts a connection as it opens (and a refused one, with its
// flag).
func (m *Metrics) reportOpened(r *report) {
	if m != nil {
		m.tcp.Opened(r.labelValues())
	}
}

// reportClosed counts a connection as it closes, with its byte counts: sent is
// what went back to the client, received what came from it.
func (m *Metrics) reportClosed(r *report) {
	if m == nil {
		return
	}
	m.tcp.Closed(r.labelValues(), r.sent, r.received)
}

// HBONERefused counts a refusal of an HBONE server; it is
// hbone.ConnConfig.OnRefuse.
func (m *Metrics) HBONERefused(r hbone.Refusal) {
	if m != nil {
		m.refused.WithLabelValues(string(r)).Inc()
	}
}
