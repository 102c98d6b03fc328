package xds

import (
	"encoding/json"
	"maps"
	"net/http"
	"time"
)

// StatusPath is where the controller's admin endpoint serves the proxies'
// status (StatusHandler), and where `regomesh status` reads it.
const StatusPath = "/debug/proxies"

// StatusReport is the JSON body served at StatusPath: every proxy that has
// subscribed to this controller replica since it started, and what is
// current, to compare them with.
type StatusReport struct {
	// Time is the controller's clock when it made the report: ages are
	// measured against it, not against the reader's clock.
	Time time.Time `json:"time"`
	// Version is the state's current version. A proxy whose scope did not
	// change since it ACKed an older one holds the current state all the
	// same: versions count the whole mesh's changes.
	Version string `json:"version"`
	// Bundles are the bundle revisions that are current, by bundle name.
	Bundles map[string]string `json:"bundles"`
	// Proxies, by SPIFFE ID.
	Proxies []ProxyStatus `json:"proxies"`
	// Waiting counts the streams accepted but not yet answered: a
	// controller answers none before its first state (it has not listed
	// the cluster yet), and their proxies are not among Proxies until then.
	Waiting int `json:"waiting,omitempty"`
}

// Report is the status of every proxy and what is current.
func (s *Server) Report() StatusReport {
	s.mu.Lock()
	version, bundles := formatVersion(s.version), maps.Clone(s.bundles)
	s.mu.Unlock()
	if bundles == nil {
		bundles = map[string]string{}
	}
	return StatusReport{Time: time.Now(), Version: version, Bundles: bundles, Proxies: s.Proxies(), Waiting: int(s.waiting.Load())}
}

// StatusHandler serves Report as JSON on GET.
func (s *Server) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Report()) // a failed write is the client's going away
	})
}
