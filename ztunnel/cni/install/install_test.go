package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
)

const kindnet = `{
  "cniVersion": "1.0.0",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

type node struct {
	cfg    Config
	plugin []byte
}

// newNode is a node's CNI directories, with the given configuration files,
// and a plugin binary to install.
func newNode(t *testing.T, files map[string]string) *node {
	t.Helper()
	root := t.TempDir()
	n := &node{cfg: Config{
		BinDir: filepath.Join(root, "opt/cni/bin"), ConfDir: filepath.Join(root, "etc/cni/net.d"),
		Plugin: filepath.Join(root, "image", PluginType), ZtunnelSocket: "/var/run/regomesh/ztunnel.sock",
		Poll: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	}, plugin: []byte("#!/bin/sh\necho plugin v1\n")}
	for _, d := range []string{n.cfg.BinDir, n.cfg.ConfDir, filepath.Dir(n.cfg.Plugin)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.cfg.Plugin, n.plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		n.write(t, name, body)
	}
	return n
}

// write puts a configuration file in place whole (a temporary file
// renamed), as a network plugin writes its list: a Run polling beside the
// test must never read half of it, which its first pass would refuse.
func (n *node) write(t *testing.T, name, body string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.cfg.ConfDir, name)); err != nil {
		t.Fatal(err)
	}
}

func (n *node) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.cfg.ConfDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chainOf lists a configuration list's plugin types, and our entry's socket.
func chainOf(t *testing.T, body string) ([]string, string) {
	t.Helper()
	var list struct {
		Plugins []struct {
			Type   string `json:"type"`
			Socket string `json:"ztunnelSocket"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("not a configuration list: %v\n%s", err, body)
	}
	var out []string
	socket := ""
	for _, p := range list.Plugins {
		out = append(out, p.Type)
		if p.Type == PluginType {
			socket = p.Socket
		}
	}
	return out, socket
}

func TestInstallChainsOntoThePrimaryList(t *testing.T) {
	n := newNode(t, map[string]string{"10-kindnet.conflist": kindnet, "99-loopback.conf": `{"cniVersion":"1.0.0","name":"lo","type":"loopback"}`})
	got, err := Install(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(n.cfg.ConfDir, "10-kindnet.conflist"); got.Conf != want || !got.Changed {
		t.Fatalf("Install = %+v, want a change of %s", got, want)
	}
	body := n.read(t, "10-kindnet.conflist")
	if ts, socket := chainOf(t, body); strings.Join(ts, ",") != "ptp,portmap,regomesh-cni" || socket != n.cfg.ZtunnelSocket {
		t.Fatalf("chain %v (socket %q), want ptp,portmap,regomesh-cni with %s:\n%s", ts, socket, n.cfg.ZtunnelSocket, body)
	}
	// The network plugin's own settings survive, numbers and all.
	for _, s := range []string{`"mtu": 1500`, `"subnet": "10.244.0.0/24"`, `"portMappings": true`, `"name": "kindnet"`} {
		if !strings.Contains(body, s) {
			t.Errorf("lost %s:\n%s", s, body)
		}
	}
	if st, _ := os.Stat(filepath.Join(n.cfg.ConfDir, "10-kindnet.conflist")); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the file's own 0600", st.Mode().Perm())
	}
	if n.read(t, "99-loopback.conf") != `{"cniVersion":"1.0.0","name":"lo","type":"loopback"}` {
		t.Error("a configuration other than the primary was changed")
	}
	bin, err := os.ReadFile(got.Binary)
	if err != nil || !bytes.Equal(bin, n.plugin) {
		t.Fatalf("binary %s: %q, %v; want the plugin's bytes", got.Binary, bin, err)
	}
	if st, _ := os.Stat(got.Binary); st.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v, want 0755", st.Mode().Perm())
	}

	// Again: nothing to do, nothing written.
	again, err := Install(n.cfg)
	if err != nil || again.Changed {
		t.Fatalf("second Install = %+v, %v; want no change", again, err)
	}
	if n.read(t, "10-kindnet.conflist") != body {
		t.Error("the second Install rewrote the list")
	}
	// A new socket path moves the entry's setting, not its place.
	n.cfg.ZtunnelSocket = "/run/regomesh/other.sock"
	if got, err := Install(n.cfg); err != nil || !got.Changed {
		t.Fatalf("Install with a new socket = %+v, %v", got, err)
	}
	if ts, socket := chainOf(t, n.read(t, "10-kindnet.conflist")); strings.Join(ts, ",") != "ptp,portmap,regomesh-cni" || socket != "/run/regomesh/other.sock" {
		t.Fatalf("after a socket change: %v, %q", ts, socket)
	}
	// A new plugin build replaces the binary.
	n.plugin = []byte("#!/bin/sh\necho plugin v2\n")
	os.WriteFile(n.cfg.Plugin, n.plugin, 0o755)
	if got, err := Install(n.cfg); err != nil || !got.Changed {
		t.Fatalf("Install of a new binary = %+v, %v", got, err)
	}
	if bin, _ := os.ReadFile(filepath.Join(n.cfg.BinDir, PluginType)); !bytes.Equal(bin, n.plugin) {
		t.Fatalf("binary not replaced: %q", bin)
	}
	if left, _ := filepath.Glob(filepath.Join(n.cfg.ConfDir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestInstallTurnsASinglePluginConfIntoAList(t *testing.T) {
	n := newNode(t, map[string]string{"05-bridge.conf": `{"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0"}`})
	got, err := Install(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Conf != filepath.Join(n.cfg.ConfDir, "05-bridge.conflist") {
		t.Fatalf("chained into %s, want 05-bridge.conflist", got.Conf)
	}
	if _, err := os.Stat(filepath.Join(n.cfg.ConfDir, "05-bridge.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the .conf stays beside its list (%v): a runtime would load the .conf first", err)
	}
	body := n.read(t, "05-bridge.conflist")
	var list struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
	}
	json.Unmarshal([]byte(body), &list)
	if ts, _ := chainOf(t, body); strings.Join(ts, ",") != "bridge,regomesh-cni" || list.CNIVersion != "0.4.0" || list.Name != "bridge-net" {
		t.Fatalf("list %v, version %q, name %q:\n%s", ts, list.CNIVersion, list.Name, body)
	}
}

func TestInstallRefusesABrokenPrimary(t *testing.T) {
	n := newNode(t, map[string]string{"10-broken.conflist": `{"plugins": {}}`})
	if _, err := Install(n.cfg); err == nil || !strings.Contains(err.Error(), "10-broken.conflist") || !strings.Contains(err.Error(), "not a list") {
		t.Fatalf("Install = %v, want an error naming the file and what is wrong", err)
	}
	if n.read(t, "10-broken.conflist") != `{"plugins": {}}` {
		t.Error("a broken configuration was rewritten")
	}
}

// run starts Run in the background; stop cancels it and returns its error.
func run(t *testing.T, cfg Config, uninstalling func(context.Context) (bool, error)) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	testgo.Go(t, func(context.Context) { done <- Run(ctx, cfg, uninstalling) })
	return func() error {
		cancel()
		return <-done
	}
}

func chained(t *testing.T, n *node, name string) func() bool {
	return func() bool {
		b, err := os.ReadFile(filepath.Join(n.cfg.ConfDir, name))
		return err == nil && strings.Contains(string(b), `"type": "regomesh-cni"`)
	}
}

func TestRunWaitsForTheNetworkAndMendsTheChain(t *testing.T) {
	n := newNode(t, nil)
	stop := run(t, n.cfg, func(context.Context) (bool, error) { return false, nil })
	// No network yet: Run waits; the pod network plugin installs its list.
	n.write(t, "10-kindnet.conflist", kindnet)
	testgo.Eventually(t, "the entry in the new list", chained(t, n, "10-kindnet.conflist"))
	// The network plugin rewrites its list and drops the entry; Run puts it back.
	n.write(t, "10-kindnet.conflist", kindnet)
	testgo.Eventually(t, "the entry back after a rewrite", chained(t, n, "10-kindnet.conflist"))
	// Someone deletes the binary; Run puts it back.
	os.Remove(filepath.Join(n.cfg.BinDir, PluginType))
	testgo.Eventually(t, "the binary back", func() bool {
		_, err := os.Stat(filepath.Join(n.cfg.BinDir, PluginType))
		return err == nil
	})
	// A restart: everything stays.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !chained(t, n, "10-kindnet.conflist")() {
		t.Fatal("a restart took the plugin out of the chain: new pods would start outside the mesh")
	}
	if _, err := os.Stat(filepath.Join(n.cfg.BinDir, PluginType)); err != nil {
		t.Fatalf("a restart removed the binary: %v", err)
	}
}

func TestRunRemovesOnUninstallOnly(t *testing.T) {
	for _, c := range []struct {
		name      string
		answer    bool
		err       error
		wantStays bool
	}{
		{"uninstall", true, nil, false},
		{"restart", false, nil, true},
		{"cannot tell", true, errors.New("API server unreachable"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t, map[string]string{"10-kindnet.conflist": kindnet})
			stop := run(t, n.cfg, func(context.Context) (bool, error) { return c.answer, c.err })
			testgo.Eventually(t, "the entry", chained(t, n, "10-kindnet.conflist"))
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			ts, _ := chainOf(t, n.read(t, "10-kindnet.conflist"))
			_, binErr := os.Stat(filepath.Join(n.cfg.BinDir, PluginType))
			if c.wantStays {
				if strings.Join(ts, ",") != "ptp,portmap,regomesh-cni" || binErr != nil {
					t.Fatalf("chain %v, binary %v: want both to stay", ts, binErr)
				}
				return
			}
			if strings.Join(ts, ",") != "ptp,portmap" {
				t.Fatalf("chain after uninstall %v, want the network's own ptp,portmap", ts)
			}
			if !errors.Is(binErr, os.ErrNotExist) {
				t.Fatalf("binary after uninstall: %v, want it gone", binErr)
			}
		})
	}
}
