package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// PluginType is the plugin's "type" in a CNI configuration list, and its
// file name in the CNI binary directory.
const PluginType = "regomesh-cni"

// Config says where the node's CNI directories are and what to install.
type Config struct {
	// BinDir is the node's CNI binary directory (/opt/cni/bin on the host).
	BinDir string
	// ConfDir is the node's CNI configuration directory (/etc/cni/net.d).
	ConfDir string
	// Plugin is the plugin binary to copy; "" means this executable.
	Plugin string
	// ZtunnelSocket is the node ztunnel's enrolment socket as the plugin,
	// on the host, reaches it.
	ZtunnelSocket string
	// Poll is how often the chain and the binary are checked; 0 means 2s.
	Poll time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// ErrNoNetwork: the configuration directory holds no network
// configuration yet (the pod network plugin has not installed its own),
// so there is no chain to join.
var ErrNoNetwork = errors.New("install: no network configuration to chain onto yet")

// Installed is what one Install pass left on the node.
type Installed struct {
	// Conf is the configuration list holding the plugin's entry.
	Conf string
	// Binary is the plugin's path in BinDir.
	Binary string
	// Changed reports whether this pass wrote anything.
	Changed bool
}

// Install makes sure the plugin binary is in BinDir and its entry ends
// the primary configuration's chain, writing only what differs.
func Install(cfg Config) (Installed, error) {
	bin, binChanged, err := installBinary(cfg)
	if err != nil {
		return Installed{}, err
	}
	conf, confChanged, err := chain(cfg)
	if err != nil {
		return Installed{Binary: bin, Changed: binChanged}, err
	}
	return Installed{Conf: conf, Binary: bin, Changed: binChanged || confChanged}, nil
}

// Remove takes the plugin's entry out of every configuration list in
// ConfDir and the binary out of BinDir. What is already gone is fine.
func Remove(cfg Config) error {
	files, err := confFiles(cfg.ConfDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		if filepath.Ext(f) != ".conflist" {
			continue
		}
		if err := unchain(f); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(cfg.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("install: remove the plugin binary: %w", err))
	}
	return errors.Join(errs...)
}

// installBinary copies the plugin into BinDir unless the same bytes are
// there already.
func installBinary(cfg Config) (string, bool, error) {
	src := cfg.Plugin
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", false, fmt.Errorf("install: find this executable: %w", err)
		}
		src = exe
	}
	want, err := os.ReadFile(src)
	if err != nil {
		return "", false, fmt.Errorf("install: read the plugin: %w", err)
	}
	dst := filepath.Join(cfg.BinDir, PluginType)
	if have, err := os.ReadFile(dst); err == nil && sha256.Sum256(have) == sha256.Sum256(want) {
		return dst, false, nil
	}
	if err := writeAtomic(dst, want, 0o755); err != nil {
		return "", false, fmt.Errorf("install: copy the plugin to %s: %w", cfg.BinDir, err)
	}
	return dst, true, nil
}

// confFiles are the network configurations in dir in the order a
// container runtime (libcni) considers them: by name, .conf, .conflist
// and .json only.
func confFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("install: read the CNI configuration directory: %w", err)
	}
	var files []string
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
	}
	slices.Sort(files)
	return files, nil
}

// chain appends the plugin's entry to the primary configuration, or
// updates it in place; a single-plugin .conf or .json is rewritten as a
// .conflist of the same name.
func chain(cfg Config) (string, bool, error) {
	files, err := confFiles(cfg.ConfDir)
	if err != nil {
		return "", false, err
	}
	if len(files) == 0 {
		return "", false, ErrNoNetwork
	}
	primary := files[0]
	raw, err := os.ReadFile(primary)
	if err != nil {
		return "", false, fmt.Errorf("install: %w", err)
	}
	list, err := asList(raw)
	if err != nil {
		return "", false, fmt.Errorf("install: %s: %w", primary, err)
	}
	entry := map[string]any{"type": PluginType, "ztunnelSocket": cfg.ZtunnelSocket}
	plugins := list["plugins"].([]any)
	i := slices.IndexFunc(plugins, isOurs)
	switch {
	case i < 0:
		plugins = append(plugins, entry)
	case i == len(plugins)-1 && plugins[i].(map[string]any)["ztunnelSocket"] == cfg.ZtunnelSocket:
		return primary, false, nil // in place, last, as wanted
	default:
		plugins = append(slices.Delete(plugins, i, i+1), entry)
	}
	list["plugins"] = plugins
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return "", false, fmt.Errorf("install: %w", err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(primary); err == nil {
		mode = st.Mode().Perm()
	}
	target := primary
	if filepath.Ext(primary) != ".conflist" {
		target = strings.TrimSuffix(primary, filepath.Ext(primary)) + ".conflist"
	}
	if err := writeAtomic(target, append(out, '\n'), mode); err != nil {
		return "", false, fmt.Errorf("install: write %s: %w", target, err)
	}
	if target != primary {
		if err := os.Remove(primary); err != nil {
			return "", false, fmt.Errorf("install: %s replaced %s, which stays: %w", target, primary, err)
		}
	}
	return target, true, nil
}

// asList reads a network configuration as a configuration list: a
// .conflist as it is, a single plugin's configuration as a list of one
// (its cniVersion and name lifted to the list).
func asList(raw []byte) (map[string]any, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not a JSON network configuration: %w", err)
	}
	if plugins, ok := doc["plugins"]; ok {
		if _, ok := plugins.([]any); !ok {
			return nil, errors.New(`"plugins" is not a list`)
		}
		return doc, nil
	}
	if _, ok := doc["type"].(string); !ok {
		return nil, errors.New(`neither a configuration list ("plugins") nor a plugin's configuration ("type")`)
	}
	list := map[string]any{"cniVersion": doc["cniVersion"], "name": doc["name"], "plugins": []any{doc}}
	return list, nil
}

func isOurs(p any) bool {
	m, ok := p.(map[string]any)
	return ok && m["type"] == PluginType
}

// unchain removes the plugin's entries from the list in file, if any.
func unchain(file string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("install: %w", err)
	}
	list, err := asList(raw)
	if err != nil {
		return nil // not ours to mend
	}
	plugins := list["plugins"].([]any)
	kept := slices.DeleteFunc(slices.Clone(plugins), isOurs)
	if len(kept) == len(plugins) {
		return nil
	}
	list["plugins"] = kept
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(file); err == nil {
		mode = st.Mode().Perm()
	}
	if err := writeAtomic(file, append(out, '\n'), mode); err != nil {
		return fmt.Errorf("install: write %s: %w", file, err)
	}
	return nil
}

// writeAtomic writes data to path through a hidden temporary file in the
// same directory and a rename, so a runtime reading the directory sees the
// old file or the new one, never half of one.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, already gone
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Run installs, then keeps the installation in place every cfg.Poll
// until ctx ends (waiting, without error, while no network configuration
// exists yet). Then it asks uninstalling whether this is an uninstall
// and, if so, removes what it installed; otherwise (a restart or an
// upgrade), or when uninstalling cannot tell, everything stays.
func Run(ctx context.Context, cfg Config, uninstalling func(context.Context) (bool, error)) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	poll := cfg.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
	waiting := false
	pass := func() error {
		got, err := Install(cfg)
		switch {
		case errors.Is(err, ErrNoNetwork):
			if !waiting {
				log.Info("waiting for the pod network's CNI configuration", "dir", cfg.ConfDir)
				waiting = true
			}
			return nil
		case err != nil:
			return err
		case got.Changed:
			log.Info("regomesh-cni installed in the CNI chain", "conf", got.Conf, "binary", got.Binary)
		}
		waiting = false
		return nil
	}
	if err := pass(); err != nil {
		return err
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return finish(cfg, log, uninstalling)
		case <-tick.C:
		}
		if err := pass(); err != nil {
			log.Error("the CNI chain could not be mended; trying again", "error", err)
		}
	}
}

// finish removes the installation on uninstall, and leaves it otherwise.
func finish(cfg Config, log *slog.Logger, uninstalling func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gone, err := uninstalling(ctx)
	if err != nil {
		log.Error("cannot tell an uninstall from a restart, so regomesh-cni stays in the CNI chain: after an uninstall, remove it with `regomesh-cni uninstall` (docs/cni.md)", "error", err)
		return nil
	}
	if !gone {
		log.Info("restart or upgrade: regomesh-cni stays in the CNI chain, so new pods wait for a ztunnel rather than start outside the mesh")
		return nil
	}
	if err := Remove(cfg); err != nil {
		return fmt.Errorf("install: uninstall: %w", err)
	}
	log.Info("uninstalled: regomesh-cni removed from the CNI chain and binary directory")
	return nil
}
