// Package istiometrics holds the collectors of Istio's standard metrics
// that more than one regomesh proxy exports, so that ztunnel's and the
// waypoint's series read the same on existing Istio dashboards.
package istiometrics

import "github.com/prometheus/client_golang/prometheus"

// TCP are Istio's four TCP collectors: istio_tcp_connections_opened_total,
// istio_tcp_connections_closed_total, istio_tcp_sent_bytes_total and
// istio_tcp_received_bytes_total, over one set of label names. A nil *TCP
// counts nothing.
type TCP struct {
	opened, closed, sent, received *prometheus.CounterVec
}

// NewTCP makes the collectors with labels, the label names every
// observation gives values for in order; reg, when not nil, registers
// them.
func NewTCP(reg prometheus.Registerer, labels []string) *TCP {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	t := &TCP{
		opened:   counter("istio_tcp_connections_opened_total", "TCP connections opened (a refused one with its response flag)."),
		closed:   counter("istio_tcp_connections_closed_total", "TCP connections closed."),
		sent:     counter("istio_tcp_sent_bytes_total", "Bytes sent to the client (the connection's downstream), counted when the connection ends."),
		received: counter("istio_tcp_received_bytes_total", "Bytes received from the client, counted when the connection ends."),
	}
	if reg != nil {
		reg.MustRegister(t.opened, t.closed, t.sent, t.received)
	}
	return t
}

// Opened counts a connection as it opens, or as it is refused.
func (t *TCP) Opened(values []string) {
	if t != nil {
		t.opened.WithLabelValues(values...).Inc()
	}
}

// Closed counts a connection as it ends, with its bytes: sent is what
// went back to the client, received what came from it.
func (t *TCP) Closed(values []string, sent, received int64) {
	if t == nil {
		return
	}
	t.closed.WithLabelValues(values...).Inc()
	t.sent.WithLabelValues(values...).Add(float64(sent))
	t.received.WithLabelValues(values...).Add(float64(received))
}

// OrUnknown is s, or "unknown" where s is empty, as Istio writes a label
// it cannot fill.
func OrUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
