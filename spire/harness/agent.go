package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/internal/childproc"
	"github.com/regomesh/regomesh/spire"
)

// AgentConfig configures a SPIRE agent. The zero value makes the calling
// process (by its uid and gid) the agent's authorized delegate, as ztunnel is.
type AgentConfig struct {
	// Name tells agents apart in directories and logs; default agent1,
	// agent2, ...
	Name string
	// Delegate is the SPIFFE ID registered for the processes that
	// DelegateSelectors match, parented to the agent; default
	// DefaultDelegate of the trust domain.
	Delegate spiffeid.ID
	// DelegateSelectors name the delegate's processes to the unix workload
	// attestor; default unix:uid and unix:gid of the calling process, so
	// that a process of the same user in another group (a waypoint, as
	// localmesh runs them) is not a delegate.
	DelegateSelectors []spire.Selector
	// AuthorizedDelegates is the agent's authorized_delegates; default
	// Delegate alone. Set it to other IDs to have the delegate refused.
	AuthorizedDelegates []spiffeid.ID
	// SyncInterval is how often the agent syncs entries with the server
	// (experimental.sync_interval); default 1s, so tests see entries soon.
	SyncInterval time.Duration
}

// DefaultDelegate is the SPIFFE ID of the ztunnel in trust domain td:
// spiffe://<td>/ns/regomesh-system/sa/ztunnel.
func DefaultDelegate(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "ns", "regomesh-system", "sa", "ztunnel")
}

// Agent is a spire-agent joined to a Server.
type Agent struct {
	server *Server
	cfg    AgentConfig
	// callerIsDelegate: the calling process is the authorized delegate, so
	// Start waits until the agent serves it.
	callerIsDelegate bool
	dir              string
	id               spiffeid.ID
	conf             string
	proc             *childproc.Process
}

// StartAgent joins a new agent to the server with a join token, registers
// its delegate, and waits until the agent is healthy.
func (s *Server) StartAgent(ctx context.Context, cfg AgentConfig) (*Agent, error) {
	a, err := s.newAgent(cfg)
	if err != nil {
		return nil, err
	}
	if err := a.prepare(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.agents = append(s.agents, a)
	s.mu.Unlock()
	return a, a.Start(ctx)
}

func (s *Server) newAgent(cfg AgentConfig) (*Agent, error) {
	s.mu.Lock()
	s.agentsNamed++
	n := s.agentsNamed
	s.mu.Unlock()
	if cfg.Name == "" {
		cfg.Name = "agent" + strconv.Itoa(n)
	}
	if cfg.Delegate.IsZero() {
		cfg.Delegate = DefaultDelegate(s.cfg.TrustDomain)
	}
	callerMatches := cfg.DelegateSelectors == nil
	if callerMatches {
		cfg.DelegateSelectors = []spire.Selector{
			{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
			{Type: "unix", Value: "gid:" + strconv.Itoa(os.Getgid())},
		}
	}
	if cfg.AuthorizedDelegates == nil {
		cfg.AuthorizedDelegates = []spiffeid.ID{cfg.Delegate}
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	a := &Agent{server: s, cfg: cfg, dir: filepath.Join(s.dir, cfg.Name),
		callerIsDelegate: callerMatches && slices.Contains(cfg.AuthorizedDelegates, cfg.Delegate)}
	// The agent refuses an admin socket in (or below) the directory of its
	// Workload API socket: siblings.
	return a, mkdirs(filepath.Join(a.dir, "data"), filepath.Join(a.dir, "workload"), filepath.Join(a.dir, "admin"))
}

// prepare creates the join token, the delegate's entry, the bootstrap
// bundle and the configuration.
func (a *Agent) prepare(ctx context.Context) error {
	token, err := a.server.joinToken(ctx)
	if err != nil {
		return err
	}
	a.id = spiffeid.RequireFromSegments(a.server.cfg.TrustDomain, "spire", "agent", "join_token", token)
	delegate := spire.Registration{ID: a.cfg.Delegate, Parent: a.id, Selectors: a.cfg.DelegateSelectors}
	if _, _, err := a.server.registrar.Apply(ctx, delegate); err != nil {
		return fmt.Errorf("harness: register delegate of %s: %w", a.cfg.Name, err)
	}
	bootstrap := filepath.Join(a.dir, "bootstrap.pem")
	if err := a.server.writeBootstrapBundle(ctx, bootstrap); err != nil {
		return err
	}
	a.conf = filepath.Join(a.dir, "agent.conf")
	if err := os.WriteFile(a.conf, []byte(a.config(token, bootstrap)), 0o644); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}

// config is the agent's HCL configuration.
func (a *Agent) config(token, bootstrap string) string {
	delegates := make([]string, len(a.cfg.AuthorizedDelegates))
	for i, id := range a.cfg.AuthorizedDelegates {
		delegates[i] = strconv.Quote(id.String())
	}
	host, port, _ := strings.Cut(a.server.Address(), ":")
	return fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "DEBUG"
  server_address = %q
  server_port = %q
  socket_path = %q
  admin_socket_path = %q
  trust_bundle_path = %q
  trust_domain = %q
  join_token = %q
  authorized_delegates = [%s]
  experimental {
    sync_interval = %q
  }
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = %q
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
      workload_size_limit = -1
    }
  }
}
`, filepath.Join(a.dir, "data"), host, port, a.WorkloadSocket(), a.AdminSocket(), bootstrap,
		a.server.cfg.TrustDomain.Name(), token, strings.Join(delegates, ", "), a.cfg.SyncInterval.String(),
		filepath.Join(a.dir, "data"))
}

// ID is the agent's SPIFFE ID, the parent of its node's workload entries.
func (a *Agent) ID() spiffeid.ID { return a.id }

// Name is the agent's name.
func (a *Agent) Name() string { return a.cfg.Name }

// Delegate is the SPIFFE ID registered for the delegate's processes.
func (a *Agent) Delegate() spiffeid.ID { return a.cfg.Delegate }

// AdminSocket is the path of the agent's admin socket, where the Delegated
// Identity API is served.
func (a *Agent) AdminSocket() string { return filepath.Join(a.dir, "admin", "admin.sock") }

// WorkloadSocket is the path of the agent's Workload API socket.
func (a *Agent) WorkloadSocket() string { return filepath.Join(a.dir, "workload", "api.sock") }

// Logs returns the agent's log, across restarts.
func (a *Agent) Logs() string {
	if a.proc == nil {
		return "(never started)"
	}
	return a.proc.Logs()
}

// Start runs the agent (again, after Stop or Kill: it keeps its identity
// and keys in its data directory) and waits until it is healthy and its
// admin socket is there.
func (a *Agent) Start(ctx context.Context) error {
	if a.proc != nil && !a.proc.Exited() {
		return fmt.Errorf("harness: %s is already running", a.cfg.Name)
	}
	proc, err := childproc.Run("spire-agent "+a.cfg.Name, a.server.agentBin, filepath.Join(a.dir, "agent.log"), "run", "-config", a.conf)
	if err != nil {
		return err
	}
	a.proc = proc
	if err := waitHealthy(ctx, proc, a.WorkloadSocket()); err != nil {
		return err
	}
	if err := a.waitAdminSocket(ctx); err != nil {
		return err
	}
	if a.callerIsDelegate {
		return a.waitAuthorized(ctx)
	}
	return nil
}

// waitAuthorized waits until the agent has the delegate's entry and serves
// the Delegated Identity API to this process.
func (a *Agent) waitAuthorized(ctx context.Context) error {
	client, err := spire.Dial(a.AdminSocket())
	if err != nil {
		return err
	}
	defer client.Close()
	for {
		err := a.tryBundles(ctx, client)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("harness: %s does not serve this process as its delegate: %w", a.cfg.Name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *Agent) tryBundles(ctx context.Context, client *spire.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	stream, err := client.SubscribeToX509Bundles(ctx)
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func (a *Agent) waitAdminSocket(ctx context.Context) error {
	for {
		if _, err := os.Stat(a.AdminSocket()); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("harness: %s: no admin socket at %s: %w", a.cfg.Name, a.AdminSocket(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the agent gracefully (SIGTERM).
func (a *Agent) Stop() { a.proc.Stop(syscall.SIGTERM, 5*time.Second) }

// Kill kills the agent (SIGKILL), as a crash would, and waits for its exit.
func (a *Agent) Kill() { a.proc.Stop(syscall.SIGKILL, 5*time.Second) }
