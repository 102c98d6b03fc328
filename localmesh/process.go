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

// Ports a ztunnel process serves on inside its node's namespace, its
// flags' defaults (ARCHITECTURE.md); the admin port on loopback only.
const (
	AdminPort     = 15000
	MetricsPort   = 15020
	ReadinessPort = 15021
)

// stopGrace is how long a ztunnel process may take to exit after SIGTERM
// (it drains for a second, --drain-timeout) before it is killed.
const stopGrace = 5 * time.Second

// BuildZtunnel builds cmd/ztunnel into dir, with extra go build flags
// (e.g. -race), and returns the binary's path. Without -race the binary is
// static (CGO_ENABLED=0), as make build ships it. The working directory must
// be inside the regomesh module.
func BuildZtunnel(ctx context.Context, dir string, flags ...string) (string, error) {
	bin := filepath.Join(dir, "ztunnel")
	args := append(append([]string{"build"}, flags...), "-o", bin, "github.com/regomesh/regomesh/cmd/ztunnel")
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
	localConfig := filepath.Join(dir, "local-config.yaml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(localConfig, m.localConfig, 0o644); err != nil {
		return err
	}
	i := slices.IndexFunc(m.Bed.Nodes(), func(n *netbed.Node) bool { return n.Name == node })
	p, err := startProcess(ctx, m.Bed.Nodes()[i], processConfig{
		binary: m.cfg.ZtunnelBinary, dir: dir, trustDomain: m.TrustDomain.Name(), localConfig: localConfig,
		adminSocket: agent.AdminSocket(), bundles: m.cfg.Bundles, accessLog: m.cfg.AccessLog,
	})
	if err != nil {
		return err
	}
	m.Processes[node] = p
	return nil
}

// waitForProcessSVIDs waits until every ztunnel process holds the SVIDs
// of its enrolled pods (those SPIRE has an entry for).
func (m *Mesh) waitForProcessSVIDs(ctx context.Context) error {
	for node, p := range m.Processes {
		var ids []string
		for _, pod := range m.cfg.Pods {
			if pod.Node == node && !pod.Outside && !pod.NoEntry {
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
	Node *netbed.Node
	// CNISocket is the unix socket pods are enrolled through.
	CNISocket string
	dir       string
	cmd       *exec.Cmd
	http      *http.Client
	done      chan struct{} // closed when the process has exited
	waitErr   error         // its exit status, set before done closes
	stopOnce  sync.Once
	stopErr   error
}

// processConfig is what the mesh hands a ztunnel process.
type processConfig struct {
	binary, dir, trustDomain, localConfig, adminSocket string
	bundles                                            []string
	accessLog                                          io.Writer
}

// startProcess starts the node's ztunnel and waits until its readiness
// endpoint answers 200 (state, policy and trust bundles loaded).
func startProcess(ctx context.Context, node *netbed.Node, c processConfig) (*ZtunnelProcess, error) {
	p := &ZtunnelProcess{Node: node, CNISocket: filepath.Join(c.dir, "cni.sock"), dir: c.dir, done: make(chan struct{})}
	p.http = &http.Client{Transport: &http.Transport{DialContext: p.dial}, Timeout: 5 * time.Second}
	log, err := os.Create(p.logPath())
	if err != nil {
		return nil, fmt.Errorf("localmesh: ztunnel log: %w", err)
	}
	defer log.Close() // the child has its own descriptor
	p.cmd = exec.Command(c.binary, p.args(c)...)
	p.cmd.Stderr = log
	if c.accessLog != nil {
		p.cmd.Stdout = &lineWriter{w: c.accessLog}
	}
	if err := node.Start(p.cmd); err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// args are the ztunnel's flags: every path in the node's directory, every
// port inside the node's namespace.
func (p *ZtunnelProcess) args(c processConfig) []string {
	accessLog := "off"
	if c.accessLog != nil {
		accessLog = "-"
	}
	args := []string{
		"--node", p.Node.Name, "--trust-domain", c.trustDomain, "--local-config", c.localConfig,
		"--spire-admin-socket", c.adminSocket, "--cni-socket", p.CNISocket,
		"--pods-file", filepath.Join(c.dir, "pods.json"),
		"--admin-addr", fmt.Sprintf("127.0.0.1:%d", AdminPort),
		"--metrics-addr", fmt.Sprintf(":%d", MetricsPort),
		"--readiness-addr", fmt.Sprintf(":%d", ReadinessPort),
		"--access-log", accessLog, "--drain-timeout", "1s",
	}
	for _, b := range c.bundles {
		args = append(args, "--bundle", b)
	}
	return args
}

// Pid is the ztunnel's process ID (its memory is in /proc/<Pid>/status).
func (p *ZtunnelProcess) Pid() int { return p.cmd.Process.Pid }

// Get fetches http://127.0.0.1:<port><path> from inside the node's
// namespace, where the ztunnel's endpoints are.
func (p *ZtunnelProcess) Get(ctx context.Context, port int, path string) (status int, body []byte, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("localmesh: ztunnel on %s: %w", p.Node.Name, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func (p *ZtunnelProcess) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(p.Node.Path, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// waitReady polls /healthz/ready until it answers 200, the process exits,
// or ctx ends.
func (p *ZtunnelProcess) waitReady(ctx context.Context) error {
	return p.poll(ctx, "ready", func() error {
		status, body, err := p.Get(ctx, ReadinessPort, "/healthz/ready")
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("%d %s", status, bytes.TrimSpace(body))
		}
		return err
	})
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

// poll calls check every 100ms until it returns nil; it gives up with the
// last error and the log's tail when the process exits or ctx ends.
func (p *ZtunnelProcess) poll(ctx context.Context, what string, check func() error) error {
	for {
		last := check()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("localmesh: ztunnel on %s exited (%s) before %s; its log:\n%s", p.Node.Name, exitText(p.waitErr), what, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("localmesh: ztunnel on %s not %s: %w (last: %w); its log:\n%s", p.Node.Name, what, ctx.Err(), last, p.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits for the exit, killing the process if it
// takes longer than stopGrace. It returns an error unless the ztunnel
// exited cleanly (status 0) on SIGTERM; later calls return the same.
func (p *ZtunnelProcess) Stop() error {
	p.stopOnce.Do(func() {
		defer p.http.CloseIdleConnections()
		select {
		case <-p.done:
			p.stopErr = fmt.Errorf("localmesh: ztunnel on %s exited before Stop (%s); its log:\n%s", p.Node.Name, exitText(p.waitErr), p.logTail())
			return
		default:
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.waitErr != nil {
				p.stopErr = fmt.Errorf("localmesh: ztunnel on %s after SIGTERM: %w; its log:\n%s", p.Node.Name, p.waitErr, p.logTail())
			}
		case <-time.After(stopGrace):
			p.cmd.Process.Kill()
			<-p.done
			p.stopErr = fmt.Errorf("localmesh: ztunnel on %s still running %s after SIGTERM: killed; its log:\n%s", p.Node.Name, stopGrace, p.logTail())
		}
	})
	return p.stopErr
}

// exitText is how a process ended, from cmd.Wait's error.
func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Logs is the ztunnel's log (JSON lines, stderr) so far.
func (p *ZtunnelProcess) Logs() string {
	b, err := os.ReadFile(p.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

func (p *ZtunnelProcess) logPath() string { return filepath.Join(p.dir, "ztunnel.log") }

// logTail is the last 40 lines of the log, for an error.
func (p *ZtunnelProcess) logTail() string {
	lines := strings.Split(strings.TrimRight(p.Logs(), "\n"), "\n")
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
