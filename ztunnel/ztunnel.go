package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// Policy is what ztunnel needs of the policy engine.
type Policy interface {
	policy.Authorizer
	// Changed is closed when the policy in force changes.
	Changed() <-chan struct{}
	// Invalidate drops cached decisions after a state change.
	Invalidate()
	Generation() uint64
	Revisions() map[string]string
}

// Config wires a ztunnel. Every field without a default is required.
type Config struct {
	// Node is this node's name: pods of other nodes are never enrolled here.
	Node string
	// TrustDomain of the mesh's identities.
	TrustDomain spiffeid.TrustDomain
	// Policy decides every inbound connection at L4.
	Policy Policy
	// Identities supplies the local pods' SVIDs.
	Identities Identities
	// Metrics and AccessLog report connections; nil disables them.
	Metrics   *Metrics
	AccessLog *AccessLog
	// Logger is the component logger; default slog.Default().
	Logger *slog.Logger
	// Conn tunes HBONE connections (windows, PING, idle release).
	Conn hbone.ConnConfig
	// DialTimeout bounds dialing a local workload or a passthrough
	// destination; default 10s.
	DialTimeout time.Duration
	// PodsFile records the enrolled pods, for RestorePods after a restart;
	// empty: not recorded.
	PodsFile string
	// ServicePorts are the ports ztunnel serves besides its capture
	// listeners (15001, 15006, 15008): admin, metrics, readiness. A
	// connection to any of them on a pod's address or loopback is refused
	// (FlagLoop), since it would come back to ztunnel. Default
	// DefaultServicePorts.
	ServicePorts []uint16
}

// Ztunnel is one node's proxy. It holds the mesh state, the enrolled pods
// (each with its listeners inside its own network namespace) and the
// connections they carry.
type Ztunnel struct {
	cfg     Config
	log     *slog.Logger
	state   atomic.Pointer[state.Snapshot]
	demand  atomic.Pointer[Demander] // nil: the state is whole (a local file)
	router  *Router
	tracker *tracker
	guard   loopGuard
	notPods []notPod // namespaces a CNI request may not name

	mu       sync.Mutex
	pods     map[string]*pod // by UID
	stopping bool
}

var (
	_ cni.Handler = (*Ztunnel)(nil)
	_ Policy      = (*policy.Engine)(nil)
)

// New returns a ztunnel with no pod enrolled; SetState must be called
// before pods are added.
func New(cfg Config) (*Ztunnel, error) {
	switch {
	case cfg.Policy == nil:
		return nil, errors.New("ztunnel: no policy engine configured")
	case cfg.Identities == nil:
		return nil, errors.New("ztunnel: no identity provider configured")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("ztunnel: no trust domain configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ServicePorts == nil {
		cfg.ServicePorts = DefaultServicePorts
	}
	z := &Ztunnel{cfg: cfg, log: cfg.Logger.With("component", "ztunnel"), tracker: newTracker(), pods: map[string]*pod{},
		guard: loopGuard{servicePorts: cfg.ServicePorts}}
	var err error
	if z.notPods, err = namespacesNotPods(z.log); err != nil {
		return nil, err
	}
	z.router = NewRouter(&z.state)
	return z, nil
}

// SetState installs a new mesh state; cached decisions are dropped and
// open connections re-checked, since labels may have changed.
func (z *Ztunnel) SetState(ctx context.Context, s *state.Snapshot) {
	z.state.Store(s)
	z.cfg.Policy.Invalidate()
	if n := z.tracker.recheck(ctx, z.cfg.Policy, s, z.log); n > 0 {
		z.log.Info("state changed: closed connections now denied", "closed", n)
	}
}

// Demander fetches what a connection to an address needs when the state
// is a controller's scope for this node rather than the whole mesh
// (ztunnel/state/xds.Client, docs/state-stream.md).
type Demander interface {
	// Demand returns once the state holds what a connection to ip needs,
	// or what ip stands for is known to be nothing of the mesh.
	Demand(ctx context.Context, ip netip.Addr) error
}

// DemandTimeout bounds how long a new outbound connection waits for the
// controller to answer for its destination (Demander).
const DemandTimeout = 5 * time.Second

// DemandFrom makes every outbound connection first ask d for its
// destination; call it before pods are added.
func (z *Ztunnel) DemandFrom(d Demander) { z.demand.Store(&d) }

// State is the mesh state in force.
func (z *Ztunnel) State() *state.Snapshot { return z.state.Load() }

// Ready says whether ztunnel can serve: state and policy loaded.
func (z *Ztunnel) Ready() error {
	switch {
	case z.state.Load() == nil:
		return errors.New("no mesh state loaded")
	case z.cfg.Policy.Generation() == 0:
		return errors.New(policy.ReasonNoPolicy)
	}
	return nil
}

// WatchPolicy re-checks open connections after every policy change, until
// ctx ends: connections the new policy denies are closed.
func (z *Ztunnel) WatchPolicy(ctx context.Context) {
	for {
		changed := z.cfg.Policy.Changed()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		if n := z.tracker.recheck(ctx, z.cfg.Policy, z.state.Load(), z.log); n > 0 {
			z.log.Info("policy changed: closed connections now denied", "closed", n, "generation", z.cfg.Policy.Generation())
		}
	}
}

// Shutdown stops accepting (every pod's listeners close), lets open
// connections finish until ctx ends, then closes the rest. Pods stay
// captured: their traffic waits for the next ztunnel rather than leaking
// out unprotected.
func (z *Ztunnel) Shutdown(ctx context.Context) error {
	z.mu.Lock()
	z.stopping = true
	pods := make([]*pod, 0, len(z.pods))
	for _, p := range z.pods {
		pods = append(pods, p)
	}
	z.mu.Unlock()
	// The HBONE servers close their connections only after the tracker has
	// closed the connections still open at the deadline, so each of those
	// is logged as drained rather than as failed.
	servers, closeServers := context.WithCancel(context.WithoutCancel(ctx))
	defer closeServers()
	for _, p := range pods {
		p.stopAccepting()
		if p.server != nil {
			go p.server.Shutdown(servers) // GOAWAY: no new tunnel on open connections either
		}
	}
	if n := z.tracker.drain(ctx); n > 0 {
		z.log.Warn("drain deadline reached: closed open connections", "closed", n)
	}
	closeServers()
	var errs []error
	for _, p := range pods {
		errs = append(errs, p.close())
	}
	return errors.Join(errs...)
}

// identityOf is the SPIFFE ID of a service account.
func (z *Ztunnel) identityOf(namespace, serviceAccount string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(z.cfg.TrustDomain, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("ztunnel: identity of %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// Certificates describes the SVIDs held for the enrolled pods, without
// keys, for the admin config dump.
func (z *Ztunnel) Certificates() []CertificateInfo {
	z.mu.Lock()
	ids := map[string]spiffeid.ID{}
	for _, p := range z.pods {
		ids[p.id.String()] = p.id
	}
	z.mu.Unlock()
	out := make([]CertificateInfo, 0, len(ids))
	for _, name := range slices.Sorted(maps.Keys(ids)) {
		svid, err := z.cfg.Identities.SVID(ids[name])
		if err != nil || len(svid.Certificates) == 0 {
			out = append(out, CertificateInfo{Identity: name, Error: fmt.Sprint(err)})
			continue
		}
		leaf := svid.Certificates[0]
		out = append(out, CertificateInfo{
			Identity: name, SerialNumber: leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Chain: len(svid.Certificates),
		})
	}
	return out
}
