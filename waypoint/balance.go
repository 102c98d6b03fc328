package waypoint

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// Passive health, Envoy's outlier detection with Istio's usual settings.
const (
	// DefaultEjectAfter consecutive failures (a 5xx answer, or a tunnel
	// that could not be opened) eject an endpoint.
	DefaultEjectAfter = 5
	// DefaultBaseEjection is how long the first ejection lasts; the n-th
	// lasts n times as long.
	DefaultBaseEjection = 30 * time.Second
	// maxEjectedPercent of a service's endpoints may be out at once, and
	// always at least one, as in Envoy.
	maxEjectedPercent = 10
)

// balancer picks a service's endpoint for each request or connection:
// least requests in flight between two random choices (Envoy's
// LEAST_REQUEST, Istio's default), among the endpoints not ejected by
// passive health. When every endpoint is ejected it picks among all of
// them, as Envoy's panic mode does, so that a service never goes dark
// for its health alone.
type balancer struct {
	ejectAfter   int32
	baseEjection time.Duration
	now          func() time.Time

	mu    sync.Mutex
	stats map[string]*endpointStats // by workload UID
}

// endpointStats are one endpoint's requests in flight and passive health.
type endpointStats struct {
	active       atomic.Int64
	failures     atomic.Int32 // consecutive
	ejections    atomic.Int32 // times ejected so far
	ejectedUntil atomic.Int64 // unix nanoseconds; 0: in service
}

func newBalancer(ejectAfter int, baseEjection time.Duration) *balancer {
	return &balancer{ejectAfter: int32(ejectAfter), baseEjection: baseEjection, now: time.Now, stats: map[string]*endpointStats{}}
}

func (b *balancer) statsOf(ep *state.Workload) *endpointStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats[ep.UID]
	if s == nil {
		s = &endpointStats{}
		b.stats[ep.UID] = s
	}
	return s
}

// pick chooses one of eps (at least one) and counts a request in flight
// on it; done must follow.
func (b *balancer) pick(eps []*state.Workload) *state.Workload {
	now := b.now().UnixNano()
	healthy := make([]*state.Workload, 0, len(eps))
	for _, ep := range eps {
		if b.statsOf(ep).ejectedUntil.Load() <= now {
			healthy = append(healthy, ep)
		}
	}
	if len(healthy) == 0 {
		healthy = eps // panic mode
	}
	ep := healthy[0]
	if n := len(healthy); n > 1 {
		i, j := rand.IntN(n), rand.IntN(n-1)
		if j >= i {
			j++
		}
		ep = healthy[i]
		if b.statsOf(healthy[j]).active.Load() < b.statsOf(ep).active.Load() {
			ep = healthy[j]
		}
	}
	b.statsOf(ep).active.Add(1)
	return ep
}

// done ends a request or connection on ep that pick chose, failed or not,
// and ejects ep after ejectAfter consecutive failures, unless too many of
// its service's endpoints (eps) are out already.
func (b *balancer) done(ep *state.Workload, eps []*state.Workload, failed bool) {
	s := b.statsOf(ep)
	s.active.Add(-1)
	if !failed {
		s.failures.Store(0)
		return
	}
	if s.failures.Add(1) < b.ejectAfter {
		return
	}
	now := b.now()
	out := 0
	for _, other := range eps {
		if b.statsOf(other).ejectedUntil.Load() > now.UnixNano() {
			out++
		}
	}
	if out > 0 && out*100 >= len(eps)*maxEjectedPercent {
		return
	}
	n := s.ejections.Add(1)
	s.ejectedUntil.Store(now.Add(time.Duration(n) * b.baseEjection).UnixNano())
	s.failures.Store(0)
}

// inFlight is the requests in flight on eps.
func (b *balancer) inFlight(eps []*state.Workload) int64 {
	if len(eps) == 0 {
		return 1 // a workload addressed directly: the request itself
	}
	var n int64
	for _, ep := range eps {
		n += b.statsOf(ep).active.Load()
	}
	return n
}

// forget drops the stats of endpoints the state no longer has.
func (b *balancer) forget(snap *state.Snapshot) {
	keep := map[string]bool{}
	for _, w := range snap.Workloads {
		keep[w.UID] = true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for uid, s := range b.stats {
		if !keep[uid] && s.active.Load() == 0 {
			delete(b.stats, uid)
		}
	}
}
