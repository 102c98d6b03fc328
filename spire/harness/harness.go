// Package harness runs real SPIRE for tests, end-to-end runs and the demo:
// a spire-server (sqlite datastore, join-token node attestation, a free
// loopback port, files in a short /tmp/rm-* directory) and spire-agents
// (joined with a token, admin socket enabled, the delegate ztunnel listed in
// authorized_delegates, unix workload attestor), built by `make spire` from
// the SPIRE module that tools/spire/go.mod pins.
//
// In tests, NewServer and Server.NewAgent start them, fail the test when
// they cannot, and stop them at cleanup, printing their logs when the test
// failed:
//
//	srv := harness.NewServer(t, harness.ServerConfig{})
//	agent := srv.NewAgent(t, harness.AgentConfig{})
//	srv.Registrar().Apply(ctx, reg) // reg.Parent = agent.ID()
//	client, _ := spire.Dial(agent.AdminSocket())
//
// Elsewhere (the demo), StartServer and Server.StartAgent do the same with
// a context and errors; Server.Close stops everything.
//
// Unix socket paths must stay under 108 bytes, which t.TempDir() paths can
// exceed; the harness therefore makes its own directories under /tmp.
package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// BinEnv names the environment variable that points to the directory of
// spire-server and spire-agent, when they are not in the module's bin/.
const BinEnv = "REGOMESH_SPIRE_BIN"

// binaries locates spire-server and spire-agent: in dir if set, else in
// $REGOMESH_SPIRE_BIN, else in bin/ at the root of the regomesh module that
// contains the working directory (where `make spire` puts them).
func binaries(dir string) (server, agent string, err error) {
	if dir == "" {
		dir = os.Getenv(BinEnv)
	}
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", "", err
		}
		dir = filepath.Join(root, "bin")
	}
	server, agent = filepath.Join(dir, "spire-server"), filepath.Join(dir, "spire-agent")
	for _, bin := range []string{server, agent} {
		if _, err := os.Stat(bin); err != nil {
			return "", "", fmt.Errorf("harness: %s not found: run `make spire` (or set %s): %w", bin, BinEnv, err)
		}
	}
	return server, agent, nil
}

// moduleRoot walks up from the working directory to regomesh's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("harness: locate the SPIRE binaries: %w", err)
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(mod), "module github.com/regomesh/regomesh\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("harness: no regomesh go.mod above the working directory: set %s to the directory of spire-server and spire-agent", BinEnv)
		}
		dir = parent
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("harness: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// mkdirs creates directories with mode 0o755.
func mkdirs(dirs ...string) error {
	var errs []error
	for _, d := range dirs {
		errs = append(errs, os.MkdirAll(d, 0o755))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}
