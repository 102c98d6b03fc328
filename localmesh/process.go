package localmesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel"
)

// Ports a ztunnel or waypoint process serves on inside its namespace, its
// flags' defaults (ARCHITECTURE.md); the admin port on loopback only.
const (
	AdminPort     = 15000
	MetricsPort   = 15020
	ReadinessPort = 15021
)

// stopGrace is how long a ztunnel or waypoint process may take to exit
// after SIGTERM (it drains for a second, --drain-timeout) before it is
// killed.
const stopGrace = 5 * time.Second

// Build builds cmd/<command> (ztunnel, waypoint) into dir, with extra go
// build flags (e.g. -race), and returns the binary's path. Without -race
// the binary is static (CGO_ENABLED=0), as make build ships it. The working
// directory must be inside the regomesh module.
func Build(ctx context.Context, dir, command string, flags ...string) (string, error) {
	bin := filepath.Join(dir, command)
	args := append(append([]string{"build"}, flags...), "-o", bin, "github.com/regomesh/regomesh/cmd/"+command)
	cmd := exec.CommandContext(ctx, "go", args...)
	if !slices.Contains(flags, "-race") { // the race detector needs cgo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as shipped (make build)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("localmesh: go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

func (m *Mesh) isProcess(node string) bool { return slices.Contains(m.cfg.ProcessNodes, node) }

// startProcess writes the node's files and starts its ztunnel process.
func (m *Mesh) startProcess(ctx context.Context, node string, agent *harness.Agent) error {
	dir := filepath.Join(m.dir, node)
	i := slices.IndexFunc(m.Bed.Nodes(), func(n *netbed.Node) bool { return n.Name == node })
	n := m.Bed.Nodes()[i]
	p := &ZtunnelProcess{Node: n, CNISocket: filepath.Join(dir, "cni.sock")}
	args := []string{
		"--node", node, "--trust-domain", m.TrustDomain.Name(),
		"--spire-admin-socket", agent.AdminSocket(), "--cni-socket", p.CNISocket,
		"--pods-file", filepath.Join(dir, "pods.json"),
	}
	if m.ControlPlane != nil {
		args = append(args, m.controllerFlags(node)...)
	} else {
		localConfig, err := m.writeLocalConfig(dir)
		if err != nil {
			return err
		}
		args = append(args, "--local-config", localConfig)
	}
	args = append(append(args, m.daemonFlags(m.cfg.AccessLog)...), m.cfg.ZtunnelFlags...)
	cmd := exec.Command(m.cfg.ZtunnelBinary, args...)
	var err error
	p.daemon, err = startDaemon(ctx, "ztunnel on "+node, n.Path, dir, cmd, n.Start, m.cfg.AccessLog)
	if err != nil {
		return err
	}
	m.Processes[node] = p
	return nil
}

// writeLocalConfig writes the mesh state as --local-config into dir.
func (m *Mesh) writeLocalConfig(dir string) (string, error) {
	path := filepath.Join(dir, "local-config.yaml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, m.localConfig, 0o644)
}

// daemonFlags are the flags ztunnel and waypoint processes share: the
// bundles (unless the controller serves them), and every port inside
// the daemon's own namespace (the admin port on loopback only).
func (m *Mesh) daemonFlags(accessLog io.Writer) []string {
	access := "off"
	if accessLog != nil {
		access = "-"
	}
	args := []string{
		"--admin-addr", fmt.Sprintf("127.0.0.1:%d", AdminPort),
		"--metrics-addr", fmt.Sprintf(":%d", MetricsPort),
		"--readiness-addr", fmt.Sprintf(":%d", ReadinessPort),
		"--access-log", access, "--drain-timeout", "1s",
	}
	if m.ControlPlane != nil {
		return args // the controller's bundle, downloaded (controllerFlags)
	}
	for _, b := range m.cfg.Bundles {
		args = append(args, "--bundle", b)
	}
	return args
}

// waitForProcessSVIDs waits until every ztunnel process holds the SVIDs
// of its enrolled pods (those SPIRE has an entry for).
func (m *Mesh) waitForProcessSVIDs(ctx context.Context) error {
	for node, p := range m.Processes {
		var ids []string
		for _, pod := range m.cfg.Pods {
			if pod.Node == node && pod.enrolled() && !pod.NoEntry {
				ids = append(ids, m.Identity(pod).String())
			}
		}
		if err := p.waitSVIDs(ctx, ids); err != nil {
			return err
		}
	}
	return nil
}

// ZtunnelProcess is a node's ztunnel running as the cmd/ztunnel binary in
// the node's network namespace, set up as a DaemonSet would set it up:
// flags and files only. Its --local-config is the mesh state the bed
// wrote, its identities come from the node's SPIRE agent admin socket,
// and pods are enrolled through its CNI socket (cni.Client), as
// regomesh-cni enrols them. Its JSON logs (stderr) go to a file (Logs),
// its access log (stdout) to Config.AccessLog.
type ZtunnelProcess struct {
	*daemon
	Node *netbed.Node
	// CNISocket is the unix socket pods are enrolled through.
	CNISocket string
}

// waitSVIDs polls /config_dump until it lists an SVID for every one of ids
// (the enrolled pods' identities).
func (p *ZtunnelProcess) waitSVIDs(ctx context.Context, ids []string) error {
	return p.poll(ctx, "holding its pods' SVIDs", func() error {
		certs, err := p.Certificates(ctx)
		if err != nil {
			return err
		}
		held := map[string]bool{}
		for _, c := range certs {
			held[c.Identity] = c.Error == "" && c.SerialNumber != ""
		}
		for _, id := range ids {
			if !held[id] {
				return fmt.Errorf("no SVID for %s in the config dump", id)
			}
		}
		return nil
	})
}

// Certificates are the SVIDs the config dump lists for the enrolled pods.
func (p *ZtunnelProcess) Certificates(ctx context.Context) ([]ztunnel.CertificateInfo, error) {
	status, body, err := p.Get(ctx, AdminPort, "/config_dump")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("localmesh: config dump: %d %s", status, body)
	}
	var dump struct {
		Certificates []ztunnel.CertificateInfo `json:"certificates"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return nil, fmt.Errorf("localmesh: config dump: %w", err)
	}
	return dump.Certificates, nil
}

// daemon is one of the mesh's binaries running as a process of its own in
// a network namespace (a node's or a pod's), configured only through its
// flags and files. Its JSON logs (stderr) go to a file in its directory
// (Logs), its access log (stdout), if any, to the writer it was given.
type daemon struct {
	name     string // for errors: "ztunnel on node-1"
	netns    string // the namespace's path, where Get connects from
	dir      string
	cmd      *exec.Cmd
	http     *http.Client
	done     chan struct{} // closed when the process has exited
	waitErr  error         // its exit status, set before done closes
	stopOnce sync.Once
	stopErr  error
}

// startDaemon starts cmd with start (a Node's or a Pod's Start, which puts
// it in that namespace) and waits until its readiness endpoint answers 200.
func startDaemon(ctx context.Context, name, netnsPath, dir string, cmd *exec.Cmd, start func(*exec.Cmd) error, accessLog io.Writer) (*daemon, error) {
	d := &daemon{name: name, netns: netnsPath, dir: dir, cmd: cmd, done: make(chan struct{})}
	d.http = &http.Client{Transport: &http.Transport{DialContext: d.dial}, Timeout: 5 * time.Second}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	log, err := os.Create(d.logPath())
	if err != nil {
		return nil, fmt.Errorf("localmesh: %s log: %w", name, err)
	}
	defer log.Close() // the child has its own descriptor
	cmd.Stderr = log
	if accessLog != nil {
		cmd.Stdout = &lineWriter{w: accessLog}
	}
	if err := start(cmd); err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	if err := d.waitReady(ctx); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

// Pid is the process ID (its memory is in /proc/<Pid>/status).
func (d *daemon) Pid() int { return d.cmd.Process.Pid }

// Get fetches http://127.0.0.1:<port><path> from inside the process's
// namespace, where its endpoints are.
func (d *daemon) Get(ctx context.Context, port int, path string) (status int, body []byte, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("localmesh: %s: %w", d.name, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func (d *daemon) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(d.netns, func() (err error) {
		var dialer net.Dialer
		c, err = dialer.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// waitReady polls /healthz/ready until it answers 200, the process exits,
// or ctx ends.
func (d *daemon) waitReady(ctx context.Context) error {
	return d.poll(ctx, "ready", func() error {
		status, body, err := d.Get(ctx, ReadinessPort, "/healthz/ready")
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("%d %s", status, bytes.TrimSpace(body))
		}
		return err
	})
}

// poll calls check every 100ms until it returns nil; it gives up with the
// last error and the log's tail when the process exits or ctx ends.
func (d *daemon) poll(ctx context.Context, what string, check func() error) error {
	for {
		last := check()
		if last == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("localmesh: %s exited (%s) before %s; its log:\n%s", d.name, exitText(d.waitErr), what, d.logTail())
		case <-ctx.Done():
			return fmt.Errorf("localmesh: %s not %s: %w (last: %w); its log:\n%s", d.name, what, ctx.Err(), last, d.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits for the exit, killing the process if it
// takes longer than stopGrace. It returns an error unless the process
// exited cleanly (status 0) on SIGTERM; later calls return the same.
func (d *daemon) Stop() error {
	d.stopOnce.Do(func() {
		defer d.http.CloseIdleConnections()
		select {
		case <-d.done:
			d.stopErr = fmt.Errorf("localmesh: %s exited before Stop (%s); its log:\n%s", d.name, exitText(d.waitErr), d.logTail())
			return
		default:
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if d.waitErr != nil {
				d.stopErr = fmt.Errorf("localmesh: %s after SIGTERM: %w; its log:\n%s", d.name, d.waitErr, d.logTail())
			}
		case <-time.After(stopGrace):
			d.cmd.Process.Kill()
			<-d.done
			d.stopErr = fmt.Errorf("localmesh: %s still running %s after SIGTERM: killed; its log:\n%s", d.name, stopGrace, d.logTail())
		}
	})
	return d.stopErr
}

// exitText is how a process ended, from cmd.Wait's error.
func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Logs is the process's log (JSON lines, stderr) so far.
func (d *daemon) Logs() string {
	b, err := os.ReadFile(d.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

func (d *daemon) logPath() string { return filepath.Join(d.dir, filepath.Base(d.cmd.Path)+".log") }

// logTail is the last 40 lines of the log, for an error.
func (d *daemon) logTail() string {
	lines := strings.Split(strings.TrimRight(d.Logs(), "\n"), "\n")
	if n := len(lines) - 40; n > 0 {
		lines = append([]string{"[... " + strconv.Itoa(n) + " earlier lines]"}, lines[n:]...)
	}
	return strings.Join(lines, "\n")
}

// lineWriter passes only whole lines on to w, so that a reader of w
// never sees half an access-log entry. One goroutine writes (os/exec's
// copy of the child's stdout).
type lineWriter struct {
	w       io.Writer
	partial []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.partial = append(l.partial, b...)
	end := bytes.LastIndexByte(l.partial, '\n') + 1
	if end == 0 {
		return len(b), nil
	}
	_, err := l.w.Write(l.partial[:end])
	l.partial = l.partial[:copy(l.partial, l.partial[end:])]
	return len(b), err
}
