package controller

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// Debug serves the last published update as JSON (GET /debug/state):
// workloads, services, bundle revisions and modules, the policies in
// force and the problems, so the controller is observable before any
// proxy streams from it. Set is a Config.Publish.
type Debug struct {
	last atomic.Pointer[Update]
}

// Set records u as the update to serve.
func (d *Debug) Set(u *Update) { d.last.Store(u) }

// debugState is the JSON form of an update.
type debugState struct {
	Version         uint64            `json:"version"`
	Workloads       []*state.Workload `json:"workloads"`
	Services        []*state.Service  `json:"services"`
	Bundle          *debugBundle      `json:"bundle"`
	WaypointBundles map[string]string `json:"waypoint_bundles"` // waypoint -> revision
	Policies        []string          `json:"policies"`         // "<Kind> <namespace>/<name>"
	Problems        []string          `json:"problems"`
}

type debugBundle struct {
	Revision string   `json:"revision"`
	Modules  []string `json:"modules"`
	Warnings []string `json:"warnings"`
}

func (d *Debug) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	u := d.last.Load()
	if u == nil {
		http.Error(w, "no state yet: the controller is waiting for its first list of the cluster", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(debugView(u)) // a failed write is the client's going away
}

func debugView(u *Update) debugState {
	out := debugState{Version: u.Version, WaypointBundles: map[string]string{}}
	if u.Snapshot != nil {
		out.Workloads, out.Services = u.Snapshot.Workloads, u.Snapshot.Services
	}
	if u.Bundle != nil {
		out.Bundle = &debugBundle{Revision: u.Bundle.Revision, Modules: slices.Sorted(maps.Keys(u.Bundle.Translation.Modules))}
		for _, w := range u.Bundle.Translation.Warnings {
			out.Bundle.Warnings = append(out.Bundle.Warnings, w.String())
		}
	}
	for ref, b := range u.WaypointBundles {
		out.WaypointBundles[ref] = b.Revision
	}
	if res := u.Policies; res != nil {
		for _, p := range res.AuthorizationPolicies {
			out.Policies = append(out.Policies, "AuthorizationPolicy "+p.ID())
		}
		for _, p := range res.PeerAuthentications {
			out.Policies = append(out.Policies, "PeerAuthentication "+p.ID())
		}
		for _, p := range res.RequestAuthentications {
			out.Policies = append(out.Policies, "RequestAuthentication "+p.ID())
		}
	}
	for _, p := range u.Problems {
		out.Problems = append(out.Problems, p.String())
	}
	return out
}
