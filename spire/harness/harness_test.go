package harness_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// A server with two agents: each agent has its own join-token identity,
// which the agent itself reports, and keeps it across a crash and restart.
func TestServerWithAgents(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := harness.NewServer(t, harness.ServerConfig{})
	a1, a2 := srv.NewAgent(t, harness.AgentConfig{}), srv.NewAgent(t, harness.AgentConfig{Name: "node2"})

	for _, tc := range []struct {
		name  string
		agent *harness.Agent
	}{
		{"agent1", a1},
		{"node2", a2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.agent.Name() != tc.name {
				t.Errorf("Name() = %q", tc.agent.Name())
			}
			if !strings.HasPrefix(tc.agent.ID().String(), "spiffe://regomesh.test/spire/agent/join_token/") {
				t.Errorf("ID() = %s, want a join-token agent ID", tc.agent.ID())
			}
			if got := agentID(t, ctx, tc.agent); got != tc.agent.ID().String() {
				t.Errorf("the agent reports ID %s, the harness %s", got, tc.agent.ID())
			}
			if len(tc.agent.AdminSocket()) >= 108 || len(tc.agent.WorkloadSocket()) >= 108 {
				t.Errorf("socket paths too long for unix sockets: %s, %s", tc.agent.AdminSocket(), tc.agent.WorkloadSocket())
			}
		})
	}
	if a1.ID() == a2.ID() {
		t.Errorf("two agents share ID %s", a1.ID())
	}

	a1.Kill()
	if err := a1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := agentID(t, ctx, a1); got != a1.ID().String() {
		t.Errorf("after a restart the agent reports ID %s, want %s", got, a1.ID())
	}
	if err := a1.Start(ctx); err == nil {
		t.Error("starting a running agent again succeeded")
	}
	if !strings.Contains(srv.Logs(), "Starting Server APIs") {
		t.Errorf("server log has no start message:\n%s", srv.Logs())
	}
	if strings.Count(a1.Logs(), "Starting Workload and SDS APIs") < 2 {
		t.Errorf("agent log does not show both runs:\n%s", a1.Logs())
	}
}

func agentID(t *testing.T, ctx context.Context, a *harness.Agent) string {
	t.Helper()
	client, err := spire.Dial(a.AdminSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	id, err := client.AgentID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// Close stops everything and removes the files it created.
func TestServerCloseRemovesFiles(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := harness.StartServer(ctx, harness.ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := srv.StartAgent(ctx, harness.AgentConfig{})
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{srv.Socket(), agent.AdminSocket()} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Close (%v)", path, err)
		}
	}
}

func TestMissingBinaries(t *testing.T) {
	_, err := harness.StartServer(context.Background(), harness.ServerConfig{BinDir: "/nonexistent"})
	if err == nil || !strings.Contains(err.Error(), "make spire") {
		t.Errorf("StartServer without binaries = %v, want an error that says to run make spire", err)
	}
}
