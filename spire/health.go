package spire

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Health is a snapshot of a Store: its streams to the agent and what it
// holds. Err says whether the store can serve every local workload.
type Health struct {
	// Agent is the admin socket of the SPIRE agent the store talks to.
	Agent string
	// Bundles is the health of the bundle stream.
	Bundles StreamHealth
	// TrustDomains are the trust domains the store holds bundles for.
	TrustDomains []spiffeid.TrustDomain
	// Workloads are the added identities, sorted by ID.
	Workloads []WorkloadHealth
}

// StreamHealth is the state of one stream to the agent.
type StreamHealth struct {
	// Connected: the stream is open and the agent has answered on it.
	Connected bool
	// Since is when Connected last changed (zero before the first answer).
	Since time.Time
	// LastError is why the stream last broke; nil while connected.
	LastError error
	// Reconnects counts the times the stream broke and was reopened.
	Reconnects int
}

// WorkloadHealth is the state of one added identity.
type WorkloadHealth struct {
	ID spiffeid.ID
	// Stream is the health of the identity's SVID stream.
	Stream StreamHealth
	// ExpiresAt is when the SVID held expires; zero without one.
	ExpiresAt time.Time
	// Err is why there is no SVID (what SVID returns); nil with one.
	Err error
}

// Health returns the store's state now.
func (s *Store) Health() Health {
	h := Health{Agent: s.client.Socket(), Bundles: s.bundleStream.health()}
	if set := s.bundles.Load(); set != nil {
		for _, b := range set.Bundles() {
			h.TrustDomains = append(h.TrustDomains, b.TrustDomain())
		}
	}
	now := time.Now()
	for _, wl := range s.snapshot() {
		wh := WorkloadHealth{ID: wl.desc.ID, Stream: wl.stream.health()}
		if svid, err := wl.current(now, h.Agent); err != nil {
			wh.Err = err
		} else {
			wh.ExpiresAt = svid.Certificates[0].NotAfter
		}
		h.Workloads = append(h.Workloads, wh)
	}
	slices.SortFunc(h.Workloads, func(a, b WorkloadHealth) int { return compareIDs(a.ID, b.ID) })
	return h
}

// snapshot returns the added workloads.
func (s *Store) snapshot() []*workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*workload, 0, len(s.workloads))
	for _, wl := range s.workloads {
		out = append(out, wl)
	}
	return out
}

func compareIDs(a, b spiffeid.ID) int {
	switch as, bs := a.String(), b.String(); {
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

// Err is nil when the store can serve: it holds bundles and an unexpired
// SVID for every added workload (streams may be down meanwhile: cached SVIDs
// serve until they expire). Otherwise it joins the reasons.
func (h Health) Err() error {
	var errs []error
	if len(h.TrustDomains) == 0 {
		reason := fmt.Errorf("spire: no bundles yet from the SPIRE agent at %s", h.Agent)
		if h.Bundles.LastError != nil {
			reason = fmt.Errorf("spire: no bundles: %w", h.Bundles.LastError)
		}
		errs = append(errs, reason)
	}
	for _, wh := range h.Workloads {
		if wh.Err != nil {
			errs = append(errs, wh.Err)
		}
	}
	return errors.Join(errs...)
}
