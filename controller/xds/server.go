package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// Config is the server's settings.
type Config struct {
	// TrustDomain of the proxies allowed to subscribe.
	TrustDomain spiffeid.TrustDomain
	// Logger receives NACKs, refused subscribers and stream ends; default
	// slog.Default().
	Logger *slog.Logger
}

// Server is the delta xDS server. Update gives it the desired state; each
// subscriber's stream sends that subscriber what it lacks.
//
// Invariants: resources and index are replaced whole by Update, never
// modified in place, so a stream may read what it took under mu without
// the lock; index always indexes resources; version grows by one with
// every Update that changes a resource.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	cfg      Config
	log      *slog.Logger
	updateMu sync.Mutex // serializes Update's encoding, outside mu
	encoded  encoded    // the last Update's, under updateMu
	nonces   atomic.Uint64
	streams  sync.WaitGroup // every stream's receiving goroutine

	mu          sync.Mutex
	waypoints   map[string][]string // SPIFFE ID -> the waypoints ("<namespace>/<gateway>") it is, in the last state
	version     uint64
	resources   map[string]*resource
	index       *scopeIndex
	subscribers map[*subscriber]struct{}
	proxies     map[string]*ProxyStatus
	// bundles are the revisions of the bundles served, by name (replaced
	// whole by UpdateBundles); bundleVersion grows with every change.
	bundles       map[string]string
	bundleVersion uint64

	// ready is closed by the first Update: until then the server has no
	// state to give, and a stream's first request waits (an empty answer
	// would tell a proxy that everything it holds is gone).
	ready     chan struct{}
	readyOnce sync.Once
	waiting   atomic.Int32 // streams waiting for ready
}

var _ discoveryv3.AggregatedDiscoveryServiceServer = (*Server)(nil)

// resource is one encoded Address, shared read-only by every stream.
type resource struct {
	name    string
	version string // hash of the encoded bytes
	node    string // a workload's node; "" for a service
	service bool
	body    *anypb.Any
	refs    resourceRefs // what a proxy holding it needs with it (scope.go)
}

// New returns a server with no state yet: streams are answered once
// Update gives it one.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "xds"),
		resources: map[string]*resource{}, index: newScopeIndex(&state.Snapshot{}, nil), subscribers: map[*subscriber]struct{}{}, proxies: map[string]*ProxyStatus{},
		ready: make(chan struct{}),
	}
}

// NewGRPCServer serves s over mutual TLS: the server presents svid's
// current SVID and accepts clients with an SVID of its trust domain that
// bundle verifies; which of them may subscribe, and for what, is decided
// per stream.
func NewGRPCServer(s *Server, svid x509svid.Source, bundle x509bundle.Source, opts ...grpc.ServerOption) *grpc.Server {
	tlsConfig := tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(s.cfg.TrustDomain))
	opts = append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		// Proxies ping every 30s so a controller that vanished is
		// noticed; allow it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WaitForHandlers(true),
	}, opts...)
	gs := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, s)
	return gs
}

// Wait returns once the goroutines of every stream have ended: call it
// after the gRPC server's Stop, which ends the streams.
func (s *Server) Wait() { s.streams.Wait() }

// Update makes snap the desired state. Resources whose encoding did not
// change keep their version, so a subscriber is sent only what changed;
// an Update that changes nothing sends nothing.
func (s *Server) Update(snap *state.Snapshot) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.mu.Lock()
	old := s.resources
	s.mu.Unlock()
	next := s.encode(snap, old)
	changed := len(next) != len(old)
	for name, r := range next {
		if old[name] != r {
			changed = true
			break
		}
	}
	waypoints := waypointsByID(snap)
	var index *scopeIndex
	if changed {
		index = newScopeIndex(snap, next)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readyOnce.Do(func() { close(s.ready) })
	s.waypoints = waypoints
	if !changed {
		return
	}
	s.resources, s.index = next, index
	s.version++
	for sub := range s.subscribers {
		sub.wakeUp()
	}
}

// UpdateBundles makes revisions (bundle name, as wire.MeshBundle and
// wire.WaypointBundle name them, to its .manifest revision) the bundles
// that are current: each proxy is sent the revisions of the bundles it
// reads (Bundles), and told when they change. Call it once the bundle
// server serves these revisions, so that a proxy told of one can fetch
// it.
func (s *Server) UpdateBundles(revisions map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if maps.Equal(s.bundles, revisions) {
		return
	}
	s.bundles = maps.Clone(revisions)
	s.bundleVersion++
	for sub := range s.subscribers {
		sub.wakeUp()
	}
}

// currentBundles are the bundle revisions p is to hold, as resources.
func (s *Server) currentBundles(p Proxy) (uint64, map[string]*resource) {
	names := s.Bundles(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*resource, len(names))
	for _, name := range names {
		if rev, ok := s.bundles[name]; ok {
			out[name] = &resource{name: name, version: rev, body: wire.EncodeBundleRevision(rev)}
		}
	}
	return s.bundleVersion, out
}

// Version is the state's current version, as sent in system_version_info.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return formatVersion(s.version)
}

func formatVersion(v uint64) string { return fmt.Sprint(v) }

// current is the state a stream diffs against.
func (s *Server) current() (uint64, map[string]*resource, *scopeIndex) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version, s.resources, s.index
}

func (s *Server) waypointsOf(id spiffeid.ID) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waypoints[id.String()]
}

// waypointsByID maps each waypoint's SPIFFE ID to the waypoints
// ("<namespace>/<gateway>") whose workload has it, among those some
// workload or service of snap names (as Snapshot.IsWaypoint counts
// them), each list sorted.
func waypointsByID(snap *state.Snapshot) map[string][]string {
	named := map[string]bool{}
	for _, w := range snap.Workloads {
		named[w.Waypoint] = true
	}
	for _, svc := range snap.Services {
		named[svc.Waypoint] = true
	}
	out := map[string][]string{}
	for _, ref := range slices.Sorted(maps.Keys(named)) {
		ns, name, ok := strings.Cut(ref, "/")
		if !ok {
			continue
		}
		if wp, ok := snap.Workload(ns, name); ok {
			out[wp.Identity()] = append(out[wp.Identity()], ref)
		}
	}
	return out
}

// encoded remembers which resource each workload and service of the
// last snapshot became. Snapshots are never modified, so the same
// pointer is the same content: a service that is the same pointer is the
// same resource, and while the services stay the same, so is a workload
// that is the same pointer; one pod's change costs one encoding, not the
// whole state's. (The controller hands on what did not change as the
// same pointers.)
type encoded struct {
	services  []*state.Service
	byService map[*state.Service]*resource
	workloads map[*state.Workload]*resource
}

// encode turns snap into resources, reusing old's for those whose bytes
// are the same.
func (s *Server) encode(snap *state.Snapshot, old map[string]*resource) map[string]*resource {
	out := make(map[string]*resource, len(snap.Workloads)+len(snap.Services))
	next := encoded{
		services:  snap.Services,
		byService: make(map[*state.Service]*resource, len(snap.Services)),
		workloads: make(map[*state.Workload]*resource, len(snap.Workloads)),
	}
	for _, svc := range snap.Services {
		r, ok := s.encoded.byService[svc]
		if !ok {
			r = encodeOne(wire.ServiceName(svc), "", resourceRefs{waypoint: svc.Waypoint}, wire.EncodeService(svc), old)
		}
		out[r.name] = r
		next.byService[svc] = r
	}
	prev := s.encoded.workloads
	if !slices.Equal(snap.Services, s.encoded.services) {
		prev = nil // which services select a workload may have changed
	}
	var selectors selectorIndex
	for _, w := range snap.Workloads {
		r, ok := prev[w]
		if !ok {
			if selectors == nil {
				selectors = indexSelectors(snap.Services)
			}
			services := selectors.selecting(w)
			refs := resourceRefs{waypoint: w.Waypoint}
			for _, svc := range services {
				refs.services = append(refs.services, wire.ServiceName(svc))
			}
			r = encodeOne(wire.WorkloadName(w), w.Node, refs, wire.EncodeWorkload(w, services), old)
		}
		out[r.name] = r
		next.workloads[w] = r
	}
	s.encoded = next
	return out
}

// selectorIndex finds the services selecting a workload without trying
// every service: each service is filed under its namespace and one of
// its selector's pairs, which the workload's labels must hold.
type selectorIndex map[selectorKey][]*state.Service

type selectorKey struct{ namespace, label, value string }

func indexSelectors(services []*state.Service) selectorIndex {
	idx := selectorIndex{}
	for _, svc := range services {
		if len(svc.Selector) == 0 {
			continue // selects nothing, as in Kubernetes
		}
		k := slices.Min(slices.Collect(maps.Keys(svc.Selector)))
		key := selectorKey{svc.Namespace, k, svc.Selector[k]}
		idx[key] = append(idx[key], svc)
	}
	return idx
}

// selecting lists the services selecting w, in no particular order: they
// become the workload's services map.
func (idx selectorIndex) selecting(w *state.Workload) []*state.Service {
	var out []*state.Service
	for k, v := range w.Labels {
		for _, svc := range idx[selectorKey{w.Namespace, k, v}] {
			if selects(svc.Selector, w.Labels) {
				out = append(out, svc)
			}
		}
	}
	return out
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// encodeOne encodes a workload (node set) or a service (node empty, refs
// naming only its waypoint).
func encodeOne(name, node string, refs resourceRefs, addr *workloadapi.Address, old map[string]*resource) *resource {
	b, err := deterministic.Marshal(addr)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %s: %v", name, err)) // generated messages of valid UTF-8 strings marshal
	}
	sum := sha256.Sum256(b)
	version := hex.EncodeToString(sum[:12])
	// The bytes hold the waypoint and the services, so refs are the same
	// when the version is.
	if r, ok := old[name]; ok && r.version == version && r.node == node {
		return r
	}
	service := addr.GetService() != nil
	return &resource{name: name, version: version, node: node, service: service, refs: refs, body: &anypb.Any{TypeUrl: wire.TypeURL, Value: b}}
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
