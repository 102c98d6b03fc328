package spire

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// StoreConfig configures a Store. The zero value suits production.
type StoreConfig struct {
	// Logger receives stream failures, SVID arrivals and rotations.
	// Default: slog.Default() with component=spire.
	Logger *slog.Logger
	// Metrics, when set, exports the store's SVIDs, rotations and stream
	// reconnects (see NewMetrics).
	Metrics *Metrics
	// MinBackoff and MaxBackoff bound the wait before reopening a stream
	// that broke (the wait doubles per failed attempt, with jitter).
	// Defaults: 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

func (c StoreConfig) withDefaults() StoreConfig {
	if c.Logger == nil {
		c.Logger = slog.Default().With("component", "spire")
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(5*time.Second, c.MinBackoff)
	}
	return c
}

// Store holds the X509-SVIDs of a node's local workloads and the bundles
// they verify peers with, kept current by streams from the node's SPIRE
// agent. It implements Identities. All methods are safe for concurrent
// use; SVID and Bundles are cheap enough for every TLS handshake.
//
// Invariants:
//   - every added identity has exactly one SVID stream, opened by its first
//     Add and closed by its last Remove (or Close); the bundle stream runs
//     from NewStore to Close;
//   - an identity's SVID is the one the agent last sent for that identity:
//     an update replaces it, an update without it drops it, and a broken
//     stream keeps it; SVID never returns an expired one.
type Store struct {
	client *Client
	cfg    StoreConfig
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.RWMutex
	workloads map[spiffeid.ID]*workload
	closed    bool

	bundles      atomic.Pointer[x509bundle.Set] // nil until the agent sends them
	bundleStream streamState

	changedMu sync.Mutex
	changed   chan struct{} // closed and replaced on every change
}

// workload is one added identity and its stream.
type workload struct {
	desc   Workload
	refs   int // Adds not yet matched by a Remove; guarded by Store.mu
	cancel context.CancelFunc
	state  atomic.Pointer[svidState] // nil until the agent's first update
	stream streamState
}

// svidState is what the agent's last update said about one identity.
type svidState struct {
	svid          *x509svid.SVID         // nil: the update had none for the identity
	federatesWith []spiffeid.TrustDomain // trust domains the identity accepts peers from
	offered       []string               // the IDs the agent issued instead, when svid is nil
}

// NewStore starts a store fed by client's agent: it opens the bundle
// stream at once and an SVID stream per added workload. The caller keeps
// ownership of client. Close stops the streams.
func NewStore(client *Client, cfg StoreConfig) *Store {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		client:    client,
		cfg:       cfg,
		log:       cfg.Logger.With("agent", client.Socket()),
		ctx:       ctx,
		cancel:    cancel,
		workloads: map[spiffeid.ID]*workload{},
		changed:   make(chan struct{}),
	}
	cfg.Metrics.track(s)
	s.wg.Go(func() { s.follow(ctx, streamBundles, &s.bundleStream, s.runBundleStream) })
	return s
}

// Close stops every stream, releases every SVID and waits for the
// store's goroutines to end.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.workloads = map[spiffeid.ID]*workload{}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.cfg.Metrics.untrack(s)
	s.notify()
	return nil
}

// Add makes w a local workload: the store subscribes to its SVIDs, which
// SVID serves once the agent sends them. Adds of the same ID are counted
// (one per pod, say): the first opens the stream, with that Workload's
// selectors or PID, and the stream stays open until as many Removes.
func (s *Store) Add(w Workload) error {
	if err := w.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("spire: add %s: the store is closed", w.ID)
	}
	if wl := s.workloads[w.ID]; wl != nil {
		wl.refs++
		return nil
	}
	w.Selectors = slices.Clone(w.Selectors)
	ctx, cancel := context.WithCancel(s.ctx)
	wl := &workload{desc: w, refs: 1, cancel: cancel}
	s.workloads[w.ID] = wl
	s.wg.Go(func() {
		s.follow(ctx, streamSVIDs, &wl.stream, func(ctx context.Context, up func()) error {
			return s.runSVIDStream(ctx, wl, up)
		})
	})
	return nil
}

// Remove undoes one Add of identity id. After the last one the stream
// closes and the SVID is released: SVID fails for id from then on. Removing
// an identity that is not added does nothing.
func (s *Store) Remove(id spiffeid.ID) {
	s.mu.Lock()
	wl, released := s.workloads[id], false
	if wl != nil {
		wl.refs--
		if released = wl.refs == 0; released {
			delete(s.workloads, id)
			wl.cancel()
		}
	}
	s.mu.Unlock()
	if released {
		s.log.Info("released SVID of removed workload", "id", id)
		s.notify()
	}
}

// SVID returns the current X509-SVID of local workload identity id. It
// fails (wrapping ErrNoSVID, saying why) when id is not added, when the
// agent has not sent its SVID (yet), has no entry for it, or refuses this
// process, and when the SVID held expired while the agent was unreachable.
func (s *Store) SVID(id spiffeid.ID) (*x509svid.SVID, error) {
	wl := s.lookup(id)
	if wl == nil {
		return nil, fmt.Errorf("%w for %s: it is not a workload of this node (no Store.Add for it)", ErrNoSVID, id)
	}
	return wl.current(time.Now(), s.client.Socket())
}

func (s *Store) lookup(id spiffeid.ID) *workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[id]
}

// current returns the SVID held if it has not expired, or why there is none.
func (wl *workload) current(now time.Time, socket string) (*x509svid.SVID, error) {
	st := wl.state.Load()
	if st != nil && st.svid != nil && now.Before(st.svid.Certificates[0].NotAfter) {
		return st.svid, nil
	}
	return nil, wl.whyNoSVID(st, socket)
}

// whyNoSVID explains the absence of an SVID, with what to check.
func (wl *workload) whyNoSVID(st *svidState, socket string) error {
	id, streamErr := wl.desc.ID, wl.stream.lastError()
	switch {
	case st != nil && st.svid != nil && streamErr != nil:
		return fmt.Errorf("%w for %s: the SVID expired at %s and the SPIRE agent could not renew it: %w",
			ErrNoSVID, id, st.svid.Certificates[0].NotAfter.Format(time.RFC3339), streamErr)
	case st != nil && st.svid != nil:
		return fmt.Errorf("%w for %s: the SVID expired at %s and the SPIRE agent at %s has not sent a new one",
			ErrNoSVID, id, st.svid.Certificates[0].NotAfter.Format(time.RFC3339), socket)
	case st != nil && len(st.offered) > 0:
		return fmt.Errorf("%w for %s: the SPIRE agent issues %v for %s, not %s: check the SPIFFE ID of the entry",
			ErrNoSVID, id, st.offered, wl.desc.describe(), id)
	case st != nil:
		return fmt.Errorf("%w for %s: the SPIRE agent at %s has no registration entry matching %s: register one "+
			"parented to the agent's SPIFFE ID (spire.Registrar, or spire-server entry create)",
			ErrNoSVID, id, socket, wl.desc.describe())
	case streamErr != nil:
		return fmt.Errorf("%w for %s: %w", ErrNoSVID, id, streamErr)
	}
	return fmt.Errorf("%w for %s yet: waiting for the SPIRE agent at %s", ErrNoSVID, id, socket)
}

// WaitSVID waits until the store holds an SVID for id, or ctx ends; then
// it returns the reason there is none.
func (s *Store) WaitSVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	for {
		changed := s.changes()
		svid, err := s.SVID(id)
		if err == nil {
			return svid, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (stopped waiting: %w)", err, ctx.Err())
		}
	}
}

// WaitReady waits until Health().Err() is nil: the store holds bundles and
// an SVID for every added workload. On ctx's end it returns the reasons.
func (s *Store) WaitReady(ctx context.Context) error {
	for {
		changed := s.changes()
		err := s.Health().Err()
		if err == nil {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w (stopped waiting: %w)", err, ctx.Err())
		}
	}
}

// changes returns a channel closed at the next change of the store.
func (s *Store) changes() <-chan struct{} {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	return s.changed
}

func (s *Store) notify() {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
}

// Bundles returns the bundles identity id accepts peers from: its own
// trust domain's, and those of the trust domains the agent says its entry
// federates with.
func (s *Store) Bundles(id spiffeid.ID) x509bundle.Source {
	return trustView{store: s, id: id}
}

type trustView struct {
	store *Store
	id    spiffeid.ID
}

func (v trustView) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != v.id.TrustDomain() && !v.store.federates(v.id, td) {
		return nil, fmt.Errorf("spire: %s does not federate with trust domain %q: add it to federates_with of the entry for %s",
			v.id, td, v.id)
	}
	return v.store.GetX509BundleForTrustDomain(td)
}

func (s *Store) federates(id spiffeid.ID, td spiffeid.TrustDomain) bool {
	wl := s.lookup(id)
	if wl == nil {
		return false
	}
	st := wl.state.Load()
	return st != nil && slices.Contains(st.federatesWith, td)
}

// GetX509BundleForTrustDomain returns the bundle of td among all those the
// agent tracks (own and federated), whichever workload they are for: Store
// is an x509bundle.Source. Proxies should use Bundles(id) instead.
func (s *Store) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	set := s.bundles.Load()
	if set == nil {
		err := fmt.Errorf("spire: no bundle for trust domain %q yet: waiting for the SPIRE agent at %s", td, s.client.Socket())
		if streamErr := s.bundleStream.lastError(); streamErr != nil {
			err = fmt.Errorf("spire: no bundle for trust domain %q: %w", td, streamErr)
		}
		return nil, err
	}
	b, ok := set.Get(td)
	if !ok {
		return nil, fmt.Errorf("spire: the SPIRE agent at %s has no bundle for trust domain %q: "+
			"is the federation relationship (or bundle) set on the SPIRE server?", s.client.Socket(), td)
	}
	return b, nil
}
