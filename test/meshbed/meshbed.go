// Package meshbed starts a whole mesh on one machine, for the e2e tests
// and `make demo`: nodes and pods as network namespaces (test/netbed), a
// real spire-server with one spire-agent per node (spire/harness), and one
// ztunnel per node capturing its pods with nftables and deciding with the
// policy bundles given. Close tears everything down.
package meshbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/vishvananda/netns"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/test/netbed"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// PodSpec is one pod of the application.
type PodSpec struct {
	Name, Node, Namespace, ServiceAccount string
	// Outside: not in the mesh, never enrolled (plaintext).
	Outside bool
	// NoEntry: enrolled, but SPIRE has no entry for it (no SVID).
	NoEntry bool
}

// Config describes the mesh.
type Config struct {
	// Prefix names the namespaces; unique per concurrent mesh.
	Prefix string
	// Net picks the addresses, 10.<Net>.0.0/16.
	Net int
	// TrustDomain of the mesh; default the harness's (regomesh.test).
	TrustDomain spiffeid.TrustDomain
	// SVIDTTL is the pods' SVID lifetime; the agent rotates them at half
	// of it. 0: the server's default (one hour).
	SVIDTTL time.Duration
	Nodes   []string
	Pods    []PodSpec
	// Bundles are read into every node's policy engine.
	Bundles []string
	// AccessLog receives every ztunnel's access log lines.
	AccessLog io.Writer
	// Logger receives the components' logs; default: discarded.
	Logger *slog.Logger
	// Registry, if set, receives the ztunnels' and engines' metrics (one
	// registry per node: Registries[node]).
	Registries map[string]*prometheus.Registry
}

// Mesh is a running mesh.
type Mesh struct {
	TrustDomain spiffeid.TrustDomain
	Pods        map[string]*netbed.Pod
	Ztunnels    map[string]*ztunnel.Ztunnel
	Engines     map[string]*policy.Engine
	State       *state.Snapshot
	Bed         *netbed.Bed
	cfg         Config
	server      *harness.Server
	stores      map[string]*spire.Store
	agents      map[string]*harness.Agent
	podsDir     string
	runCtx      context.Context
	cancel      context.CancelFunc
}

// Start brings the mesh up; on error everything started is torn down.
func Start(ctx context.Context, cfg Config) (*Mesh, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &Mesh{cfg: cfg, Pods: map[string]*netbed.Pod{}, Ztunnels: map[string]*ztunnel.Ztunnel{},
		Engines: map[string]*policy.Engine{}, stores: map[string]*spire.Store{}, agents: map[string]*harness.Agent{}}
	if err := m.start(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Mesh) start(ctx context.Context) error {
	if err := m.network(); err != nil {
		return err
	}
	server, err := harness.StartServer(ctx, harness.ServerConfig{TrustDomain: m.cfg.TrustDomain})
	if err != nil {
		return err
	}
	m.server, m.TrustDomain = server, server.TrustDomain()
	if m.State, err = m.buildState(); err != nil {
		return err
	}
	if m.podsDir, err = os.MkdirTemp("", "rm-pods-"); err != nil {
		return err
	}
	m.runCtx, m.cancel = context.WithCancel(context.Background())
	for _, node := range m.cfg.Nodes {
		if err := m.startNode(ctx, node); err != nil {
			return fmt.Errorf("meshbed: node %s: %w", node, err)
		}
	}
	if err := m.waitForSVIDs(ctx); err != nil {
		return err
	}
	return m.enrolAll(ctx)
}

func (m *Mesh) network() error {
	bed, err := netbed.New(m.cfg.Prefix, m.cfg.Net)
	if err != nil {
		return err
	}
	m.Bed = bed
	nodes := map[string]*netbed.Node{}
	for _, name := range m.cfg.Nodes {
		if nodes[name], err = bed.AddNode(name); err != nil {
			return err
		}
	}
	for _, p := range m.cfg.Pods {
		n := nodes[p.Node]
		if n == nil {
			return fmt.Errorf("meshbed: pod %s on unknown node %s", p.Name, p.Node)
		}
		if m.Pods[p.Name], err = n.AddPod(p.Name); err != nil {
			return err
		}
	}
	return nil
}

// buildState is the local config the ztunnels read.
func (m *Mesh) buildState() (*state.Snapshot, error) {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for _, p := range m.cfg.Pods {
		protocol := "HBONE"
		if p.Outside {
			protocol = "NONE"
		}
		fmt.Fprintf(&b, "- {name: %s, namespace: %s, serviceAccount: %s, node: %s, ips: [%s], labels: {app: %s}, protocol: %s}\n",
			p.Name, p.Namespace, p.ServiceAccount, p.Node, m.Pods[p.Name].IP, p.Name, protocol)
	}
	return state.Decode([]byte(b.String()), state.Options{TrustDomain: m.TrustDomain.Name()})
}

func (m *Mesh) startNode(ctx context.Context, node string) error {
	agent, err := m.server.StartAgent(ctx, harness.AgentConfig{Name: node})
	if err != nil {
		return err
	}
	m.agents[node] = agent
	if err := m.register(ctx, agent, node); err != nil {
		return err
	}
	reg := m.cfg.Registries[node]
	var pm *policy.Metrics
	var zm *ztunnel.Metrics
	if reg != nil {
		pm, zm = policy.NewMetrics(reg), ztunnel.NewMetrics(reg)
	}
	log := m.cfg.Logger.With("node", node)
	engine, err := policy.NewEngine(policy.Config{Logger: log, Metrics: pm})
	if err != nil {
		return err
	}
	if err := LoadBundles(ctx, engine, m.cfg.Bundles); err != nil {
		return err
	}
	client, err := spire.Dial(agent.AdminSocket())
	if err != nil {
		return err
	}
	store := spire.NewStore(client, spire.StoreConfig{Logger: log})
	m.Engines[node], m.stores[node] = engine, store
	z, err := m.newZtunnel(node, zm)
	if err != nil {
		return err
	}
	m.Ztunnels[node] = z
	return nil
}

func (m *Mesh) newZtunnel(node string, metrics *ztunnel.Metrics) (*ztunnel.Ztunnel, error) {
	z, err := ztunnel.New(ztunnel.Config{
		Node: node, TrustDomain: m.TrustDomain, Policy: m.Engines[node], Identities: Identities{m.stores[node]},
		Metrics: metrics, AccessLog: ztunnel.NewAccessLog(m.cfg.AccessLog), Logger: m.cfg.Logger.With("node", node),
		PodsFile: filepath.Join(m.podsDir, node+".json"),
	})
	if err != nil {
		return nil, err
	}
	z.SetState(m.runCtx, m.State)
	go z.WatchPolicy(m.runCtx)
	return z, nil
}

// RestartZtunnel stops the node's ztunnel (draining until ctx ends) and
// starts a new one, which restores the enrolled pods from its pods file,
// as a restarted ztunnel process does.
func (m *Mesh) RestartZtunnel(ctx context.Context, node string) (int, error) {
	if err := m.Ztunnels[node].Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return 0, err
	}
	z, err := m.newZtunnel(node, nil)
	if err != nil {
		return 0, err
	}
	m.Ztunnels[node] = z
	return z.RestorePods(context.Background())
}

// SVID returns the current SVID of pod p from its node's store.
func (m *Mesh) SVID(p PodSpec) (*x509svid.SVID, error) {
	return m.stores[p.Node].SVID(m.Identity(p))
}

// Agent is the node's SPIRE agent, for tests that stop and restart it.
func (m *Mesh) Agent(node string) *harness.Agent { return m.agents[node] }

// register creates the SPIRE entries of the node's pods, parented to its agent.
func (m *Mesh) register(ctx context.Context, agent *harness.Agent, node string) error {
	for _, p := range m.cfg.Pods {
		if p.Node != node || p.Outside || p.NoEntry {
			continue
		}
		reg, err := spire.KubernetesRegistration(m.TrustDomain, p.Namespace, p.ServiceAccount, agent.ID())
		if err != nil {
			return err
		}
		reg.X509SVIDTTL = m.cfg.SVIDTTL
		if _, _, err := m.server.Registrar().Apply(ctx, reg); err != nil {
			return err
		}
	}
	return nil
}

// waitForSVIDs waits until every pod's SVID arrived, so the first
// connection does not race the agents' sync interval.
func (m *Mesh) waitForSVIDs(ctx context.Context) error {
	for _, p := range m.cfg.Pods {
		if p.Outside || p.NoEntry {
			continue
		}
		store := m.stores[p.Node]
		id := m.Identity(p)
		if err := (Identities{store}).Hold(id, p.Namespace, p.ServiceAccount); err != nil {
			return err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			_, err := store.SVID(id)
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("meshbed: no SVID for %s: %w", id, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func (m *Mesh) enrolAll(ctx context.Context) error {
	for _, p := range m.cfg.Pods {
		if p.Outside {
			continue
		}
		pod := m.Pods[p.Name]
		if err := m.Ztunnels[p.Node].AddPod(ctx, cni.Pod{UID: p.Name, Name: p.Name, Namespace: p.Namespace, Netns: pod.Path}); err != nil {
			return fmt.Errorf("meshbed: enrol %s: %w", p.Name, err)
		}
	}
	return nil
}

// Identity is the SPIFFE ID of a pod.
func (m *Mesh) Identity(p PodSpec) spiffeid.ID {
	return spiffeid.RequireFromSegments(m.TrustDomain, "ns", p.Namespace, "sa", p.ServiceAccount)
}

// Spec returns the PodSpec of the pod named name.
func (m *Mesh) Spec(name string) (PodSpec, bool) {
	i := slices.IndexFunc(m.cfg.Pods, func(p PodSpec) bool { return p.Name == name })
	if i < 0 {
		return PodSpec{}, false
	}
	return m.cfg.Pods[i], true
}

// Close stops the ztunnels (draining for up to a second), SPIRE and the
// network.
func (m *Mesh) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	var errs []error
	for _, z := range m.Ztunnels {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		errs = append(errs, z.Shutdown(ctx))
		cancel()
	}
	for _, s := range m.stores {
		s.Close()
	}
	if m.server != nil {
		errs = append(errs, m.server.Close())
	}
	if m.Bed != nil {
		errs = append(errs, m.Bed.Close())
	}
	if m.podsDir != "" {
		os.RemoveAll(m.podsDir)
	}
	return errors.Join(errs...)
}

// Logs are the SPIRE server's and agents' logs, for a failed test.
func (m *Mesh) Logs() string {
	if m.server == nil {
		return ""
	}
	return m.server.Logs()
}

// LoadBundles reads the bundles and loads them into engine.
func LoadBundles(ctx context.Context, engine *policy.Engine, paths []string) error {
	bundles, err := policy.ReadBundles(paths, nil)
	if err != nil {
		return err
	}
	return engine.Load(ctx, bundles...)
}

// Identities adapts a SPIRE store to ztunnel, as cmd/ztunnel does.
type Identities struct{ *spire.Store }

var _ ztunnel.Identities = Identities{}

// Hold starts fetching the SVID of a service account's pods.
func (s Identities) Hold(id spiffeid.ID, namespace, serviceAccount string) error {
	return s.Add(spire.Workload{ID: id, Selectors: spire.KubernetesSelectors(namespace, serviceAccount)})
}

// Release undoes one Hold.
func (s Identities) Release(id spiffeid.ID) { s.Remove(id) }

// InPod runs fn on a thread inside the pod's network namespace, as the
// pod's app would run. The thread is retired afterwards.
func InPod(p *netbed.Pod, fn func() error) error {
	h, err := netns.GetFromPath(p.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	errc := make(chan error, 1)
	go enter(h, errc, fn)
	return <-errc
}

// Dial connects from inside pod p.
func Dial(p *netbed.Pod, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InPod(p, func() (err error) { c, err = net.DialTimeout("tcp", addr, timeout); return err })
	return c, err
}

// Listen listens inside pod p.
func Listen(p *netbed.Pod, addr string) (net.Listener, error) {
	var l net.Listener
	err := InPod(p, func() (err error) { l, err = net.Listen("tcp", addr); return err })
	return l, err
}

// Echo serves a TCP echo on l until it closes.
func Echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
}
