package ztunnel

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// CertificateInfo describes one SVID ztunnel holds, without its key.
type CertificateInfo struct {
	Identity     string    `json:"identity"`
	SerialNumber string    `json:"serial_number"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	Chain        int       `json:"chain_length"`
	// Error says why there is no SVID for an enrolled pod's identity.
	Error string `json:"error,omitempty"`
}

// AdminSources are what the admin endpoints report.
type AdminSources struct {
	State        func() *state.Snapshot
	Revisions    func() map[string]string // policy bundle -> revision
	Generation   func() uint64            // policy generation in force
	Certificates func() []CertificateInfo
	LogLevel     *slog.LevelVar
	// Ready returns nil when ztunnel can serve traffic, else why not.
	Ready func() error
}

// configDump is /config_dump: what ztunnel acts on, never a private key.
type configDump struct {
	Workloads    []*state.Workload `json:"workloads"`
	Services     []*state.Service  `json:"services"`
	Policy       policyDump        `json:"policy"`
	Certificates []CertificateInfo `json:"certificates"`
}

type policyDump struct {
	Generation uint64            `json:"generation"`
	Revisions  map[string]string `json:"revisions"`
}

// AdminHandler serves /config_dump, /logging and /debug/pprof/ (bind it to
// loopback only: it is the admin port, 15000).
func AdminHandler(src AdminSources) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, dump(src))
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		setLogLevel(w, r, src.LogLevel)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ReadinessHandler serves /healthz/ready (port 15021): 200 when ready, 503
// with the reason otherwise.
func ReadinessHandler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func dump(src AdminSources) configDump {
	d := configDump{Workloads: []*state.Workload{}, Services: []*state.Service{}, Certificates: []CertificateInfo{}}
	if snap := call(src.State); snap != nil {
		d.Workloads, d.Services = snap.Workloads, snap.Services
	}
	d.Policy.Revisions = call(src.Revisions)
	d.Policy.Generation = call(src.Generation)
	if certs := call(src.Certificates); certs != nil {
		d.Certificates = certs
	}
	return d
}

func call[T any](f func() T) T {
	var zero T
	if f == nil {
		return zero
	}
	return f()
}

// setLogLevel answers GET with the level and POST/PUT ?level=debug|info|warn|error with the change.
func setLogLevel(w http.ResponseWriter, r *http.Request, level *slog.LevelVar) {
	if level == nil {
		http.Error(w, "log level is not adjustable", http.StatusNotImplemented)
		return
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		var l slog.Level
		if err := l.UnmarshalText([]byte(r.URL.Query().Get("level"))); err != nil {
			http.Error(w, "level must be debug, info, warn or error", http.StatusBadRequest)
			return
		}
		level.Set(l)
	}
	fmt.Fprintf(w, "level: %s\n", level.Level())
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
