// Package localmesh starts a whole mesh on one machine: the mesh behind
// `regomesh demo`, which the e2e tests and the benchmarks run on too.
// Nodes and pods are network namespaces (localmesh/netbed); a real
// spire-server runs with one spire-agent per node (spire/harness), and one
// ztunnel per node captures its pods with nftables and decides with the
// policy bundles given. Close tears everything down.
//
// A node's ztunnel runs in this process by default (Mesh.Ztunnels), where
// tests can reach into it. Nodes listed in Config.ProcessNodes run the
// real cmd/ztunnel binary instead, as a process in the node's namespace
// configured only through its flags and files (Mesh.Processes), for
// figures that belong to a ztunnel process, such as its memory.
//
// With Config.Kubernetes the mesh is driven by a Kubernetes API server,
// as a cluster is: a regomesh-controller (ControlPlane) runs in this
// process and watches it, every node's ztunnel is a process streaming
// its state and policy from the controller (--controller), and the mesh,
// as the nodes' kubelets would, makes the pods' Pod objects and sets
// their status, and a waypoint pod's Gateway. Policy is then what the
// API server holds.
package localmesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.yaml.in/yaml/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// PodSpec is one pod of the application.
type PodSpec struct {
	Name, Node, Namespace, ServiceAccount string
	// Outside: not in the mesh, never enrolled (plaintext).
	Outside bool
	// NoEntry: enrolled, but SPIRE has no entry for it (no SVID).
	NoEntry bool
	// Waypoint: the pod runs a waypoint (Config.WaypointBinary, see
	// WaypointProcess) instead of an app; it is not enrolled with its
	// node's ztunnel, and gets its own SVID from the Workload API.
	Waypoint bool
}

// enrolled says whether the pod's traffic goes through its node's ztunnel.
func (p PodSpec) enrolled() bool { return !p.Outside && !p.Waypoint }

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
	// Registry, if set, receives the in-process ztunnels' and engines'
	// metrics (one registry per node: Registries[node]).
	Registries map[string]*prometheus.Registry
	// ProcessNodes run their ztunnel as ZtunnelBinary, a process of its
	// own in the node's namespace (see ZtunnelProcess); the other nodes'
	// ztunnels run in this process.
	ProcessNodes []string
	// ZtunnelBinary is a built cmd/ztunnel (Build); required with
	// ProcessNodes.
	ZtunnelBinary string
	// ZtunnelFlags are more flags for every ztunnel process (its
	// --shadow-bundle, say).
	ZtunnelFlags []string
	// Workloads and Services join the pods' workloads in the mesh state
	// every ztunnel reads: a cluster's worth of workloads on other nodes,
	// say. They are never enrolled.
	Workloads []state.LocalWorkload
	Services  []state.LocalService
	// JSONState writes the local config as JSON instead of YAML.
	JSONState bool
	// WaypointBinary is a built cmd/waypoint (Build); required with a
	// Waypoint pod.
	WaypointBinary string
	// WaypointAccessLog receives the waypoints' access log lines (one per
	// request or relayed connection).
	WaypointAccessLog io.Writer
	// WaypointFlags are more flags for every waypoint process (its
	// --routes and --request-authentication, say).
	WaypointFlags []string
	// Kubernetes, when set, is the API server the mesh is driven from
	// (see the package comment): every node runs its ztunnel as a
	// process (ZtunnelBinary) with --controller, and Bundles is unused.
	// A Waypoint pod's process streams from the controller too, for the
	// Gateway made for it (named after the pod); Services become Service
	// objects, their Waypoint the istio.io/use-waypoint label.
	Kubernetes *rest.Config
}

// Mesh is a running mesh.
type Mesh struct {
	TrustDomain spiffeid.TrustDomain
	Pods        map[string]*netbed.Pod
	// Ztunnels and Engines are the in-process nodes' ztunnels and policy
	// engines, Processes the other nodes' ztunnel processes.
	Ztunnels  map[string]*ztunnel.Ztunnel
	Engines   map[string]*policy.Engine
	Processes map[string]*ZtunnelProcess
	// Waypoints are the waypoint pods' processes, by pod name.
	Waypoints map[string]*WaypointProcess
	State     *state.Snapshot
	Bed       *netbed.Bed
	// ControlPlane and Kube are, with Config.Kubernetes, the controller
	// the ztunnels stream from and a client of the API server.
	ControlPlane *ControlPlane
	Kube         kubernetes.Interface
	cfg          Config
	server       *harness.Server
	stores       map[string]*spire.Store
	agents       map[string]*harness.Agent
	// localConfig is State as ztunnel's --local-config YAML.
	localConfig []byte
	// dir holds the in-process ztunnels' pods files (<node>.json) and a
	// directory per ztunnel process (<node>/).
	dir    string
	runCtx context.Context
	cancel context.CancelFunc
	// watchers are the in-process ztunnels' policy watchers; Close waits
	// for them, so none logs after it returned.
	watchers sync.WaitGroup
}

// Start brings the mesh up; on error everything started is torn down.
func Start(ctx context.Context, cfg Config) (*Mesh, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(cfg.ProcessNodes) > 0 && cfg.ZtunnelBinary == "" {
		return nil, errors.New("localmesh: ProcessNodes need a ZtunnelBinary (Build)")
	}
	hasWaypoint := slices.ContainsFunc(cfg.Pods, func(p PodSpec) bool { return p.Waypoint })
	if hasWaypoint && cfg.WaypointBinary == "" {
		return nil, errors.New("localmesh: a Waypoint pod needs a WaypointBinary (Build)")
	}
	if cfg.Kubernetes != nil {
		if cfg.ZtunnelBinary == "" {
			return nil, errors.New("localmesh: a mesh driven by Kubernetes needs a ZtunnelBinary (Build)")
		}
		cfg.ProcessNodes = cfg.Nodes // only the binary streams from the controller
	}
	m := &Mesh{cfg: cfg, Pods: map[string]*netbed.Pod{}, Ztunnels: map[string]*ztunnel.Ztunnel{},
		Engines: map[string]*policy.Engine{}, Processes: map[string]*ZtunnelProcess{}, Waypoints: map[string]*WaypointProcess{},
		stores: map[string]*spire.Store{}, agents: map[string]*harness.Agent{}}
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
	if err := m.buildState(); err != nil {
		return err
	}
	if m.dir, err = os.MkdirTemp("", "rm-mesh-"); err != nil {
		return err
	}
	m.runCtx, m.cancel = context.WithCancel(context.Background())
	if m.cfg.Kubernetes != nil {
		if err := m.startKubernetes(ctx); err != nil {
			return err
		}
	}
	for _, node := range m.cfg.Nodes {
		if err := m.startNode(ctx, node); err != nil {
			return fmt.Errorf("localmesh: node %s: %w", node, err)
		}
	}
	if err := m.waitForSVIDs(ctx); err != nil {
		return err
	}
	if err := m.waitStreamed(ctx); err != nil {
		return err
	}
	if err := m.enrolAll(ctx); err != nil {
		return err
	}
	if err := m.waitForProcessSVIDs(ctx); err != nil {
		return err
	}
	return m.startWaypoints(ctx)
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
			return fmt.Errorf("localmesh: pod %s on unknown node %s", p.Name, p.Node)
		}
		if m.Pods[p.Name], err = n.AddPod(p.Name); err != nil {
			return err
		}
	}
	return nil
}

// buildState writes the local config the ztunnels read, the pods'
// workloads then Config's, and decodes it as a ztunnel does.
func (m *Mesh) buildState() error {
	lc := state.LocalConfig{Services: m.cfg.Services}
	for _, p := range m.cfg.Pods {
		protocol := state.HBONE
		if p.Outside {
			protocol = state.None
		}
		lc.Workloads = append(lc.Workloads, state.LocalWorkload{
			Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount, Node: p.Node,
			IPs: []string{m.Pods[p.Name].IP.String()}, Labels: map[string]string{"app": p.Name}, Protocol: protocol,
		})
	}
	lc.Workloads = append(lc.Workloads, m.cfg.Workloads...)
	marshal := yaml.Marshal
	if m.cfg.JSONState {
		marshal = func(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
	}
	var err error
	if m.localConfig, err = marshal(lc); err != nil {
		return fmt.Errorf("localmesh: local config: %w", err)
	}
	m.State, err = state.Decode(m.localConfig, state.Options{TrustDomain: m.TrustDomain.Name()})
	return err
}

func (m *Mesh) startNode(ctx context.Context, node string) error {
	agentCfg := harness.AgentConfig{Name: node}
	if m.cfg.Kubernetes != nil { // the ztunnel's own SVID, for the controller
		id, err := wire.ZtunnelID(m.TrustDomain, node)
		if err != nil {
			return err
		}
		agentCfg.Delegate = id
	}
	agent, err := m.server.StartAgent(ctx, agentCfg)
	if err != nil {
		return err
	}
	m.agents[node] = agent
	if err := m.register(ctx, agent, node); err != nil {
		return err
	}
	if m.isProcess(node) {
		return m.startProcess(ctx, node, agent)
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
	if err := (policy.BundleFiles{Paths: m.cfg.Bundles}).Load(ctx, engine); err != nil {
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
		PodsFile: filepath.Join(m.dir, node+".json"),
	})
	if err != nil {
		return nil, err
	}
	z.SetState(m.runCtx, m.State)
	m.watchers.Go(func() { z.WatchPolicy(m.runCtx) })
	return z, nil
}

// RestartZtunnel stops the node's ztunnel (draining until ctx ends) and
// starts a new one, which restores the enrolled pods from its pods file,
// as a restarted ztunnel process does.
func (m *Mesh) RestartZtunnel(ctx context.Context, node string) (int, error) {
	if m.isProcess(node) {
		return 0, fmt.Errorf("localmesh: %s's ztunnel is a process; restart it yourself", node)
	}
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
	if m.isProcess(p.Node) {
		return nil, fmt.Errorf("localmesh: %s's ztunnel is a process: its SVIDs are in its config dump", p.Node)
	}
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
		if p.Waypoint {
			reg = m.waypointRegistration(p, agent)
		}
		if _, _, err := m.server.Registrar().Apply(ctx, reg); err != nil {
			return err
		}
	}
	return nil
}

// waitForSVIDs waits until every in-process pod's SVID arrived, so the
// first connection does not race the agents' sync interval.
func (m *Mesh) waitForSVIDs(ctx context.Context) error {
	for _, p := range m.cfg.Pods {
		if !p.enrolled() || p.NoEntry || m.isProcess(p.Node) {
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
				return fmt.Errorf("localmesh: no SVID for %s: %w", id, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// enrolAll enrols every pod in the mesh with its node's ztunnel: directly
// in this process, through the CNI socket for a process.
func (m *Mesh) enrolAll(ctx context.Context) error {
	for _, p := range m.cfg.Pods {
		if !p.enrolled() {
			continue
		}
		pod := m.Pods[p.Name]
		info := cni.Pod{UID: p.Name, Name: p.Name, Namespace: p.Namespace, Netns: pod.Path}
		var err error
		if proc := m.Processes[p.Node]; proc != nil {
			info.IPs = []string{pod.IP.String()}
			err = (&cni.Client{Socket: proc.CNISocket}).Add(ctx, info)
		} else {
			err = m.Ztunnels[p.Node].AddPod(ctx, info)
		}
		if err != nil {
			return fmt.Errorf("localmesh: enrol %s: %w", p.Name, err)
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

// Close stops the ztunnels (draining for up to a second; a process that
// does not exit cleanly on SIGTERM is an error), SPIRE and the network.
func (m *Mesh) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	var errs []error
	for _, w := range m.Waypoints {
		errs = append(errs, w.Stop())
	}
	for _, z := range m.Ztunnels {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		errs = append(errs, z.Shutdown(ctx))
		cancel()
	}
	m.watchers.Wait()
	for _, p := range m.Processes {
		errs = append(errs, p.Stop())
	}
	if m.ControlPlane != nil {
		errs = append(errs, m.ControlPlane.close())
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
	if m.dir != "" {
		os.RemoveAll(m.dir)
	}
	return errors.Join(errs...)
}

// Logs are the SPIRE server's and agents' logs, then the ztunnel
// processes', for a failed test.
func (m *Mesh) Logs() string {
	var b strings.Builder
	if m.server != nil {
		b.WriteString(m.server.Logs())
	}
	for _, node := range m.cfg.ProcessNodes {
		if p := m.Processes[node]; p != nil {
			fmt.Fprintf(&b, "\nztunnel process on %s:\n%s", node, p.Logs())
		}
	}
	for name, w := range m.Waypoints {
		fmt.Fprintf(&b, "\nwaypoint %s:\n%s", name, w.Logs())
	}
	return b.String()
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
func InPod(p *netbed.Pod, fn func() error) error { return inNetns(p.Path, fn) }

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

// Echo serves a TCP echo on l until it closes; then it closes the
// connections still open and returns once their goroutines have ended.
func Echo(l net.Listener) {
	var (
		mu    sync.Mutex
		open  = map[net.Conn]struct{}{}
		conns sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		open[c] = struct{}{}
		mu.Unlock()
		conns.Go(func() {
			io.Copy(c, c)
			c.Close()
			mu.Lock()
			delete(open, c)
			mu.Unlock()
		})
	}
}
