package spire

import (
	"errors"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of one or more Stores:
//
//   - regomesh_spire_svids: X509-SVIDs held for local workloads (unexpired);
//   - regomesh_spire_svid_expiry_seconds: seconds until the soonest of them
//     expires (absent while none is held): alert when it nears zero, which
//     means the agent has not been renewing;
//   - regomesh_spire_svid_rotations_total: SVIDs replaced by a new one;
//   - regomesh_spire_stream_reconnects_total{stream}: streams to the agent
//     reopened after they broke, by stream ("x509_svids", "x509_bundles").
//
// The gauges are computed from the stores at scrape time. A nil *Metrics
// is valid and records nothing. All methods are safe for concurrent use.
type Metrics struct {
	rotations  prometheus.Counter
	reconnects *prometheus.CounterVec
	svids      *prometheus.Desc
	expiry     *prometheus.Desc

	mu     sync.Mutex
	stores map[*Store]struct{}
}

// NewMetrics creates the collectors and registers them on reg (unless reg
// is nil). A reg that already holds them (a second store in the process)
// keeps its own, which NewMetrics returns.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "regomesh", Subsystem: "spire", Name: "svid_rotations_total",
			Help: "X509-SVIDs of local workloads replaced by a new one (rotation, or agent restart).",
		}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "regomesh", Subsystem: "spire", Name: "stream_reconnects_total",
			Help: "Streams to the SPIRE agent reopened after they broke, by stream.",
		}, []string{"stream"}),
		svids: prometheus.NewDesc("regomesh_spire_svids",
			"X509-SVIDs held for local workloads, unexpired.", nil, nil),
		expiry: prometheus.NewDesc("regomesh_spire_svid_expiry_seconds",
			"Seconds until the soonest-expiring X509-SVID held expires.", nil, nil),
		stores: map[*Store]struct{}{},
	}
	m.reconnects.WithLabelValues(streamSVIDs)
	m.reconnects.WithLabelValues(streamBundles)
	if reg == nil {
		return m
	}
	err := reg.Register(m)
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(*Metrics); ok {
			return existing
		}
	}
	if err != nil {
		panic(err)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.rotations.Describe(ch)
	m.reconnects.Describe(ch)
	ch <- m.svids
	ch <- m.expiry
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.rotations.Collect(ch)
	m.reconnects.Collect(ch)
	held, soonest := m.held(time.Now())
	ch <- prometheus.MustNewConstMetric(m.svids, prometheus.GaugeValue, float64(held))
	if held > 0 {
		ch <- prometheus.MustNewConstMetric(m.expiry, prometheus.GaugeValue, soonest)
	}
}

// held counts the unexpired SVIDs of the tracked stores and the seconds
// until the soonest expires.
func (m *Metrics) held(now time.Time) (n int, soonest float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	soonest = math.Inf(1)
	for s := range m.stores {
		for _, wl := range s.snapshot() {
			st := wl.state.Load()
			if st == nil || st.svid == nil || !now.Before(st.svid.Certificates[0].NotAfter) {
				continue
			}
			n++
			soonest = min(soonest, st.svid.Certificates[0].NotAfter.Sub(now).Seconds())
		}
	}
	return n, soonest
}

func (m *Metrics) track(s *Store) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stores[s] = struct{}{}
}

func (m *Metrics) untrack(s *Store) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.stores, s)
}

func (m *Metrics) rotated() {
	if m != nil {
		m.rotations.Inc()
	}
}

func (m *Metrics) reconnect(stream string) {
	if m != nil {
		m.reconnects.WithLabelValues(stream).Inc()
	}
}
