package bundleserver

import (
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/xds"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// DefaultMaxWait is the longest long poll the server holds when
// Config.MaxWait is not set.
const DefaultMaxWait = 120 * time.Second

// Proxies names the client behind an SVID and the bundles it may read:
// the state stream's identity mapping (*xds.Server), so that a proxy is
// the same proxy on both.
type Proxies interface {
	Identify(spiffeid.ID) (xds.Proxy, error)
	Bundles(xds.Proxy) []string
}

var _ Proxies = (*xds.Server)(nil)

// Config is the bundle server's settings.
type Config struct {
	// Signer signs every bundle served. Without one New refuses to serve
	// unless Unsigned says so: a proxy that verifies signatures refuses
	// unsigned bundles, and one that does not takes whatever reaches it.
	Signer *Signer
	// Unsigned serves bundles without signatures, on purpose.
	Unsigned bool
	// Proxies identifies clients by their verified SVIDs (required).
	Proxies Proxies
	// MaxWait caps the long poll a client asks for with Prefer:
	// wait=<seconds>; default DefaultMaxWait.
	MaxWait time.Duration
	// Logger receives refused clients and bundles that failed to sign;
	// default slog.Default().
	Logger *slog.Logger
}

// Server serves the controller's bundles over the OPA bundle service
// protocol (ServeHTTP): the mesh-wide bundle at /bundles/mesh and each
// waypoint's at /bundles/waypoint/<namespace>/<gateway>.
//
// Invariants: served is replaced whole by Update, never modified in
// place, and each archive in it is immutable, so a request may use what
// it took under mu without the lock; changed is closed, and replaced,
// exactly when served changes, waking every long poll.
type Server struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	served  map[string]*served // by bundle name (wire.MeshBundle, wire.WaypointBundle)
	changed chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	waiting   atomic.Int64 // long polls held now
}

// served is one bundle as clients download it.
type served struct {
	revision string
	etag     string // the revision, quoted: equal revisions are equal bundles
	archive  []byte // prepared: signed, and declared empty when it is
}

// New returns a server serving nothing until the first Update.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Proxies == nil:
		return nil, errors.New("bundleserver: Config.Proxies is required: clients are identified by their SVIDs")
	case cfg.Signer == nil && !cfg.Unsigned:
		return nil, errors.New("bundleserver: no signing key: configure one (--bundle-signing-key), or say that bundles are to be served unsigned (--bundle-unsigned; docs/state-stream.md)")
	case cfg.Signer != nil && cfg.Unsigned:
		return nil, errors.New("bundleserver: a signing key and unsigned bundles both configured: choose one")
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "bundleserver"),
		served: map[string]*served{}, changed: make(chan struct{}), closed: make(chan struct{}),
	}, nil
}

// Update serves u's bundles: the mesh-wide one and each waypoint's. A
// bundle whose revision is already served is not prepared again; one
// that fails to prepare (sign) is logged, and the revision served before
// stays, as the controller keeps the last bundle that built. A
// waypoint's bundle that u no longer has is no longer served. Call it
// from one goroutine (the controller's Publish).
func (s *Server) Update(u *controller.Update) {
	want := map[string]*controller.Bundle{}
	if u.Bundle != nil {
		want[wire.MeshBundle] = u.Bundle
	}
	for ref, b := range u.WaypointBundles {
		want[wire.WaypointBundle(ref)] = b
	}
	s.mu.Lock()
	old := s.served
	s.mu.Unlock()
	next := make(map[string]*served, len(want))
	for name, b := range want {
		if cur := old[name]; cur != nil && cur.revision == b.Revision {
			next[name] = cur
			continue
		}
		archive, err := prepare(b.Archive, s.cfg.Signer)
		if err != nil {
			s.log.Error("bundle not served; the revision served before stays", "bundle", name, "revision", b.Revision, "error", err)
			if cur := old[name]; cur != nil {
				next[name] = cur
			}
			continue
		}
		next[name] = &served{revision: b.Revision, etag: `"` + b.Revision + `"`, archive: archive}
	}
	if maps.EqualFunc(old, next, func(a, b *served) bool { return a == b }) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.served = next
	close(s.changed)
	s.changed = make(chan struct{})
}

// Revisions are the revisions served, by bundle name: what the state
// stream announces (xds.Server.UpdateBundles).
func (s *Server) Revisions() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.served))
	for name, b := range s.served {
		out[name] = b.revision
	}
	return out
}

// Archive is the bundle name as served, and its revision; ok is false
// when it is not served.
func (s *Server) Archive(name string) (archive []byte, revision string, ok bool) {
	b, _ := s.lookup(name)
	if b == nil {
		return nil, "", false
	}
	return b.archive, b.revision, true
}

// lookup is the bundle name as served now, and the channel closed at the
// next change.
func (s *Server) lookup(name string) (*served, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served[name], s.changed
}

// Close ends the long polls in progress (each answers 304) and makes new
// ones answer at once; bundles are still served. An http.Server made by
// NewHTTPServer calls it when it shuts down.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.closed) }) }
