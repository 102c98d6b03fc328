package localmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// WaypointGID is the primary group a waypoint process runs with. The node
// agent's unix attestor tells it from the ztunnels by it: a waypoint's
// SPIRE entry selects unix:gid:1337 (Istio's proxy group), and the
// ztunnel's delegate entry selects the uid and gid 0 of the processes that
// may fetch other workloads' SVIDs. The waypoint gets its own SVID from
// the Workload API, as a waypoint pod does in a cluster (there with k8s
// selectors), and none of the ztunnel's.
const WaypointGID = 1337

// WaypointProcess is a waypoint pod: the cmd/waypoint binary running in
// the pod's network namespace, taking HBONE on 15008 itself (the pod is
// not enrolled with its node's ztunnel). Its JSON logs (stderr) go to a
// file (Logs), its access log (stdout) to Config.WaypointAccessLog.
type WaypointProcess struct {
	*daemon
	Pod *netbed.Pod
	// ID is the waypoint's SPIFFE ID, the SVID it serves with.
	ID spiffeid.ID
	// restarts counts the processes before this one (RestartWaypoint).
	restarts int
}

// waypointRegistration is the SPIRE entry of a waypoint pod: its
// service account's ID, for the node agent's workloads in WaypointGID.
func (m *Mesh) waypointRegistration(p PodSpec, agent *harness.Agent) spire.Registration {
	return spire.Registration{
		ID: m.Identity(p), Parent: agent.ID(), X509SVIDTTL: m.cfg.SVIDTTL,
		Selectors: []spire.Selector{{Type: "unix", Value: "gid:" + strconv.Itoa(WaypointGID)}},
	}
}

// startWaypoints starts every waypoint pod's process and waits until each
// is ready: state and policy loaded, and its SVID at hand.
func (m *Mesh) startWaypoints(ctx context.Context) error {
	for _, spec := range m.cfg.Pods {
		if !spec.Waypoint {
			continue
		}
		w, err := m.startWaypoint(ctx, spec, filepath.Join(m.dir, "waypoint-"+spec.Name))
		if err != nil {
			return err
		}
		m.Waypoints[spec.Name] = w
	}
	return nil
}

// startWaypoint starts spec's waypoint process with its files (local
// config, log) in dir, and waits until it is ready. With
// Config.Kubernetes it streams its state and downloads its Gateway's
// bundle from the control plane, as a waypoint pod of a cluster does.
func (m *Mesh) startWaypoint(ctx context.Context, spec PodSpec, dir string) (*WaypointProcess, error) {
	pod := m.Pods[spec.Name]
	source, err := m.waypointStateFlags(spec, dir)
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"--trust-domain", m.TrustDomain.Name(),
		"--spire-workload-socket", m.agents[spec.Node].WorkloadSocket(),
		"--hbone-addr", ":15008", "--bundle-poll", "250ms",
	}, source...)
	args = append(args, m.cfg.WaypointFlags...)
	cmd := exec.Command(m.cfg.WaypointBinary, append(args, m.daemonFlags(m.cfg.WaypointAccessLog)...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Gid: WaypointGID, Groups: []uint32{}}}
	d, err := startDaemon(ctx, "waypoint "+spec.Namespace+"/"+spec.Name, pod.Path, dir, cmd, pod.Start, m.cfg.WaypointAccessLog)
	if err != nil {
		return nil, err
	}
	return &WaypointProcess{daemon: d, Pod: pod, ID: m.Identity(spec)}, nil
}

// waypointStateFlags are where spec's waypoint reads its state: the
// control plane with Config.Kubernetes, else a local config in dir.
func (m *Mesh) waypointStateFlags(spec PodSpec, dir string) ([]string, error) {
	if m.cfg.Kubernetes != nil {
		return m.waypointControllerFlags(spec), nil
	}
	localConfig, err := m.writeLocalConfig(dir)
	if err != nil {
		return nil, err
	}
	return []string{"--local-config", localConfig}, nil
}

// RestartWaypoint stops the named waypoint pod's process with SIGTERM (it
// drains for --drain-timeout: GOAWAY on HTTP/2, idle keep-alives closed,
// requests in flight finished), then starts a new one with the same flags
// and waits until it is ready, as a waypoint Deployment's pod is replaced.
// Between the two nothing listens on the pod's 15008. The new process
// logs to a directory of its own, so the old one's log is kept. It
// returns an error if the old process did not exit cleanly.
func (m *Mesh) RestartWaypoint(ctx context.Context, name string) error {
	old, ok := m.Waypoints[name]
	spec, found := m.Spec(name)
	if !ok || !found {
		return fmt.Errorf("localmesh: no waypoint pod %s", name)
	}
	if err := old.Stop(); err != nil {
		return err
	}
	old.restarts++
	dir := filepath.Join(m.dir, fmt.Sprintf("waypoint-%s-%d", name, old.restarts))
	w, err := m.startWaypoint(ctx, spec, dir)
	if err != nil {
		return err
	}
	w.restarts = old.restarts
	m.Waypoints[name] = w
	return nil
}

// PolicyGeneration is the waypoint's policy generation from its config
// dump: it grows with every bundle set the waypoint loads.
func (w *WaypointProcess) PolicyGeneration(ctx context.Context) (uint64, error) {
	status, body, err := w.Get(ctx, AdminPort, "/config_dump")
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("localmesh: %s config dump: %d %s", w.name, status, body)
	}
	var dump struct {
		Policy struct {
			Generation uint64 `json:"generation"`
		} `json:"policy"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return 0, fmt.Errorf("localmesh: %s config dump: %w", w.name, err)
	}
	return dump.Policy.Generation, nil
}

// WaitPolicyAfter waits until the waypoint has loaded a bundle set after
// generation gen (it polls its --bundle paths).
func (w *WaypointProcess) WaitPolicyAfter(ctx context.Context, gen uint64) error {
	return w.poll(ctx, "reloading its policy", func() error {
		now, err := w.PolicyGeneration(ctx)
		if err == nil && now <= gen {
			err = fmt.Errorf("policy generation still %d", now)
		}
		return err
	})
}
