package ztunnel

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/hbone"
)

// Response flags, as Istio reports them on TCP metrics.
const (
	FlagNone        = "-"
	FlagDenied      = "DENY"        // policy refused the connection
	FlagConnect     = "CONNECT"     // the upstream could not be reached
	FlagTLSFailure  = "TLS_FAILURE" // the mTLS handshake failed
	FlagNoSVID      = "NO_SVID"     // no SVID for the source workload: refused, never plaintext
	FlagNoRoute     = "NO_ROUTE"    // nothing known at the destination address
	FlagLoop        = "LOOP"        // addressed to one of ztunnel's own ports: it would loop back
	FlagDrained     = "DRAINED"     // closed at the end of a drain on shutdown
	FlagPolicyClose = "POLICY"      // closed because new policy denies it
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

// ConnLabels are the label values of one connection.
type ConnLabels struct {
	Reporter             string
	SourceWorkload       string
	SourceNamespace      string
	SourcePrincipal      string
	DestinationWorkload  string
	DestinationNamespace string
	DestinationPrincipal string
	DestinationService   string
	ResponseFlags        string
	MutualTLS            bool
}

func (l ConnLabels) values() []string {
	security := "none"
	if l.MutualTLS {
		security = "mutual_tls"
	}
	flags := l.ResponseFlags
	if flags == "" {
		flags = FlagNone
	}
	return []string{
		l.Reporter,
		orUnknown(l.SourceWorkload), orUnknown(l.SourceNamespace), orUnknown(l.SourcePrincipal),
		orUnknown(l.DestinationWorkload), orUnknown(l.DestinationNamespace), orUnknown(l.DestinationPrincipal),
		orUnknown(l.DestinationService), "tcp", flags, security,
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

// Opened counts a connection as it opens (and a refused one, with its flag).
func (m *Metrics) Opened(l ConnLabels) {
	if m != nil {
		m.opened.WithLabelValues(l.values()...).Inc()
	}
}

// Closed counts a connection as it closes, with its byte counts: sent is
// what went back to the client, received what came from it.
func (m *Metrics) Closed(l ConnLabels, sent, received int64) {
	if m == nil {
		return
	}
	v := l.values()
	m.closed.WithLabelValues(v...).Inc()
	m.sent.WithLabelValues(v...).Add(float64(sent))
	m.received.WithLabelValues(v...).Add(float64(received))
}

// HBONERefused counts a refusal of an HBONE server; it is
// hbone.ConnConfig.OnRefuse.
func (m *Metrics) HBONERefused(r hbone.Refusal) {
	if m != nil {
		m.refused.WithLabelValues(string(r)).Inc()
	}
}
