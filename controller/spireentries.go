package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// SPIREEntries registers, in a SPIRE server, the entries of the mesh's
// enrolled workloads, for clusters without spire-controller-manager: per
// enrolled (namespace, service account, node), an entry of SPIFFE ID
// spiffe://<td>/ns/<ns>/sa/<sa> with selectors k8s:ns:<ns> and
// k8s:sa:<sa>, parented to the node's agent (NodeAgents), and deletes
// them when their workloads go. It is fed the controller's published
// updates (Set, a Config.Publish) and writes from Run.
//
// Invariants: it only ever creates, changes or deletes entries whose
// entry ID begins with its prefix ("regomesh.<cluster>."), which it chose
// when it created them; every pass compares the whole desired set with
// the server's, so a pass that failed (the server away) loses nothing:
// the next one does what is left. Only the leader writes.
type SPIREEntries struct {
	cfg    SPIREEntriesConfig
	prefix string
	wake   chan struct{}

	mu      sync.Mutex
	desired map[string]spire.Entry // by entry ID; nil before the first update
	problem error                  // why the desired set lacks some workloads
	status  SPIREEntriesStatus
}

// SPIREEntriesConfig is what SPIREEntries needs.
type SPIREEntriesConfig struct {
	// Registrar writes entries through the SPIRE server API.
	Registrar *spire.Registrar
	// TrustDomain of the workloads' SPIFFE IDs.
	TrustDomain spiffeid.TrustDomain
	// Agents says which agent a node's entries are parented to.
	Agents NodeAgents
	// Leading reports whether this replica writes (Controller.Leading);
	// nil: always.
	Leading func() bool
	// Resync is how often the entries are compared with the server's
	// although nothing changed: what restores an entry deleted by hand.
	// Default 5m.
	Resync time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed pass is
	// tried again (doubling); default 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// SPIREEntriesStatus is what the registration did last, served as JSON at
// /debug/spire-entries.
type SPIREEntriesStatus struct {
	// Desired counts the entries the mesh's workloads need (node aliases
	// included).
	Desired int `json:"desired"`
	// Leading is whether this replica writes.
	Leading bool `json:"leading"`
	// SyncedAt is when the server last held exactly the desired entries.
	SyncedAt time.Time `json:"synced_at,omitzero"`
	// Created, Updated and Deleted count the entries written since start.
	Created int `json:"created"`
	Updated int `json:"updated"`
	Deleted int `json:"deleted"`
	// LastError is why the last pass failed, empty once one succeeds;
	// Failures counts the passes failed in a row.
	LastError string `json:"last_error,omitempty"`
	Failures  int    `json:"failures"`
	// Foreign are the entries the mesh needs that another registrar (an
	// administrator, spire-controller-manager) made already, with the same
	// selectors: they serve the workloads, and the mesh leaves them alone.
	Foreign []string `json:"foreign,omitempty"`
	// Problem names workloads that get no entry, and why.
	Problem string `json:"problem,omitempty"`
}

// NewSPIREEntries checks cfg and fills in its defaults.
func NewSPIREEntries(cfg SPIREEntriesConfig) (*SPIREEntries, error) {
	if cfg.Registrar == nil || cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("controller: SPIRE registration needs the server API and the trust domain")
	}
	if err := cfg.Agents.Validate(); err != nil {
		return nil, err
	}
	cfg.Resync = cmp.Or(cfg.Resync, 5*time.Minute)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, time.Second)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, time.Minute), cfg.MinBackoff)
	if cfg.Leading == nil {
		cfg.Leading = func() bool { return true }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &SPIREEntries{cfg: cfg, prefix: "regomesh." + cfg.Agents.Cluster + ".", wake: make(chan struct{}, 1)}, nil
}

// Prefix begins the entry ID of every entry the mesh owns.
func (s *SPIREEntries) Prefix() string { return s.prefix }

// Set takes the workloads of u as the ones to register; Run writes them.
func (s *SPIREEntries) Set(u *Update) {
	if u.Snapshot == nil {
		return
	}
	desired, problem := s.entriesOf(u.Snapshot.Workloads)
	s.mu.Lock()
	s.desired, s.problem = desired, problem
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// entriesOf are the entries the enrolled workloads need, by entry ID; a
// workload that cannot have one (a node name that makes no SPIFFE ID) is
// left out and named in the error.
func (s *SPIREEntries) entriesOf(workloads []*state.Workload) (map[string]spire.Entry, error) {
	out := map[string]spire.Entry{}
	var problems []string
	for _, w := range workloads {
		if w.Protocol != state.HBONE || w.Node == "" {
			continue // not enrolled, or nowhere yet
		}
		if err := s.add(out, w); err != nil {
			problems = append(problems, fmt.Sprintf("%s/%s: %v", w.Namespace, w.Name, err))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return out, fmt.Errorf("controller: no SPIRE entry for %d workloads: %v", len(problems), problems)
	}
	return out, nil
}

func (s *SPIREEntries) add(out map[string]spire.Entry, w *state.Workload) error {
	td := s.cfg.TrustDomain
	parent, err := s.cfg.Agents.parent(td, w.Node)
	if err != nil {
		return err
	}
	reg, err := spire.KubernetesRegistration(td, w.Namespace, w.ServiceAccount, parent)
	if err != nil {
		return err
	}
	alias, ok, err := s.cfg.Agents.alias(td, w.Node)
	if err != nil {
		return err
	}
	if ok {
		out[s.entryID(alias)] = spire.Entry{EntryID: s.entryID(alias), Registration: alias}
	}
	out[s.entryID(reg)] = spire.Entry{EntryID: s.entryID(reg), Registration: reg}
	return nil
}

// entryID names the entry of (SPIFFE ID, parent): the mesh's prefix and
// a hash, the same in every replica and after every restart, so that a
// second create of the same entry is refused as existing, not doubled.
func (s *SPIREEntries) entryID(reg spire.Registration) string {
	sum := sha256.Sum256([]byte(reg.ID.String() + " " + reg.Parent.String()))
	return s.prefix + hex.EncodeToString(sum[:16])
}

// Run writes the entries until ctx ends: at every update, every Resync,
// and after a failure once its backoff has passed. It reconciles only
// after the first update, the controller's first full view of the
// cluster: before it, every owned entry would look unwanted.
func (s *SPIREEntries) Run(ctx context.Context) {
	timer := time.NewTimer(s.cfg.Resync)
	defer timer.Stop()
	backoff := s.cfg.MinBackoff
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		next := s.cfg.Resync
		switch ok, err := s.pass(ctx); {
		case err != nil && ctx.Err() == nil:
			s.cfg.Logger.Error("SPIRE entries not written; trying again", "in", backoff, "error", err)
			next, backoff = backoff, min(2*backoff, s.cfg.MaxBackoff)
		case !ok:
			next = min(s.cfg.Resync, 2*time.Second) // not leading (or no state yet): look again soon
		default:
			backoff = s.cfg.MinBackoff
		}
		timer.Reset(next)
	}
}

// pass makes the server hold the desired entries, if this replica leads
// and there is a state; it says whether it tried.
func (s *SPIREEntries) pass(ctx context.Context) (bool, error) {
	s.mu.Lock()
	desired, problem := s.desired, s.problem
	leading := s.cfg.Leading()
	s.status.Leading, s.status.Desired = leading, len(desired)
	s.status.Problem = ""
	if problem != nil {
		s.status.Problem = problem.Error()
	}
	s.mu.Unlock()
	if desired == nil || !leading {
		return false, nil
	}
	created, updated, deleted, err := s.reconcile(ctx, desired)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Created += created
	s.status.Updated += updated
	s.status.Deleted += deleted
	if err != nil {
		s.status.LastError, s.status.Failures = err.Error(), s.status.Failures+1
		return true, err
	}
	s.status.LastError, s.status.Failures, s.status.SyncedAt = "", 0, time.Now()
	if created+updated+deleted > 0 {
		s.cfg.Logger.Info("SPIRE entries written", "created", created, "updated", updated, "deleted", deleted, "entries", len(desired))
	}
	return true, nil
}

// reconcile creates what is missing, then updates what differs, then
// deletes what no workload needs: an entry is made before the one it
// replaces goes (a pod moved to another node).
func (s *SPIREEntries) reconcile(ctx context.Context, desired map[string]spire.Entry) (created, updated, deleted int, err error) {
	held, err := s.cfg.Registrar.Entries(ctx, s.prefix)
	if err != nil {
		return 0, 0, 0, err
	}
	have := make(map[string]spire.Entry, len(held))
	for _, e := range held {
		have[e.EntryID] = e
	}
	var create, update []spire.Entry
	for _, id := range slices.Sorted(maps.Keys(desired)) {
		want := desired[id]
		switch got, ok := have[id]; {
		case !ok:
			create = append(create, want)
		case !sameEntry(got.Registration, want.Registration):
			update = append(update, want)
		}
	}
	var remove []string
	for _, e := range held {
		if _, ok := desired[e.EntryID]; !ok {
			remove = append(remove, e.EntryID)
		}
	}
	existing, err := s.cfg.Registrar.CreateEntries(ctx, create)
	if err != nil {
		return 0, 0, 0, err
	}
	s.noteForeign(existing, desired)
	created = len(create) - len(existing)
	if err := s.cfg.Registrar.UpdateEntries(ctx, update); err != nil {
		return created, 0, 0, err
	}
	if err := s.cfg.Registrar.DeleteEntries(ctx, remove); err != nil {
		return created, len(update), 0, err
	}
	return created, len(update), len(remove), nil
}

// noteForeign records the entries the server refused to create because
// an entry not the mesh's registers the same identity already: that entry
// serves the workload, and is left alone.
func (s *SPIREEntries) noteForeign(existing []string, desired map[string]spire.Entry) {
	var foreign []string
	for _, id := range existing {
		e := desired[id]
		foreign = append(foreign, fmt.Sprintf("%s (parent %s)", e.ID, e.Parent))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Foreign = foreign
}

// sameEntry: the fields an update writes, and those the entry ID stands
// for, agree.
func sameEntry(a, b spire.Registration) bool {
	sorted := func(r spire.Registration) ([]string, []string) {
		var sel, fed []string
		for _, s := range r.Selectors {
			sel = append(sel, s.String())
		}
		for _, td := range r.FederatesWith {
			fed = append(fed, td.Name())
		}
		slices.Sort(sel)
		slices.Sort(fed)
		return sel, fed
	}
	selA, fedA := sorted(a)
	selB, fedB := sorted(b)
	return a.ID == b.ID && a.Parent == b.Parent && a.X509SVIDTTL == b.X509SVIDTTL &&
		slices.Equal(selA, selB) && slices.Equal(fedA, fedB)
}

// Status is what the registration did last.
func (s *SPIREEntries) Status() SPIREEntriesStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// ServeHTTP serves Status as JSON.
func (s *SPIREEntries) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.Status()) // a failed write is the client's going away
}
