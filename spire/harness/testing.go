package harness

import (
	"context"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/childproc"
)

// startTimeout bounds how long tests wait for SPIRE to come up.
const startTimeout = 60 * time.Second

// NewServer starts a SPIRE server for t, failing t if it cannot. At
// cleanup it stops the server and its agents; when t failed, it first logs
// the tail of every log.
func NewServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := StartServer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.logAll(t)
		}
		if err := s.Close(); err != nil {
			t.Errorf("harness: close: %v", err)
		}
	})
	return s
}

// NewAgent starts an agent of s for t, failing t if it cannot. The
// server's cleanup stops it.
func (s *Server) NewAgent(t testing.TB, cfg AgentConfig) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	a, err := s.StartAgent(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// logLines is how much of each log a failed test prints.
const logLines = 150

func (s *Server) logAll(t testing.TB) {
	t.Logf("spire-server %s (%s) log:\n%s", s.cfg.TrustDomain, s.Address(), childproc.Tail(s.Logs(), logLines))
	s.mu.Lock()
	agents := append([]*Agent(nil), s.agents...)
	s.mu.Unlock()
	for _, a := range agents {
		t.Logf("spire-agent %s (%s) log:\n%s", a.cfg.Name, a.id, childproc.Tail(a.Logs(), logLines))
	}
}
