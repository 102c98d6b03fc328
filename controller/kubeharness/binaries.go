package kubeharness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BinEnv names the environment variable that points to the directory of
// kube-apiserver, when it is not in the module's bin/.
const BinEnv = "REGOMESH_KUBE_BIN"

// ErrNoBinaries is wrapped by the error of a Start that found no
// kube-apiserver or no etcd; New skips the test on it.
var ErrNoBinaries = errors.New("kubeharness: binaries missing")

type binaries struct{ apiserver, etcd string }

// findBinaries locates kube-apiserver in dir if set, else in
// $REGOMESH_KUBE_BIN, else in bin/ at the root of the regomesh module that
// contains the working directory (where `make kube` puts it); and etcd in
// that same directory, else on PATH.
func findBinaries(dir string) (binaries, error) {
	if dir == "" {
		dir = os.Getenv(BinEnv)
	}
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			return binaries{}, err
		}
		dir = filepath.Join(root, "bin")
	}
	b := binaries{apiserver: filepath.Join(dir, "kube-apiserver"), etcd: filepath.Join(dir, "etcd")}
	if _, err := os.Stat(b.apiserver); err != nil {
		return binaries{}, fmt.Errorf("%w: %s not found: run `make kube` (or set %s): %w", ErrNoBinaries, b.apiserver, BinEnv, err)
	}
	if _, err := os.Stat(b.etcd); err != nil {
		if b.etcd, err = exec.LookPath("etcd"); err != nil {
			return binaries{}, fmt.Errorf("%w: no etcd in %s or on PATH: run `make kube`, which installs Debian's etcd-server: %w", ErrNoBinaries, dir, err)
		}
	}
	return b, nil
}

// moduleRoot walks up from the working directory to regomesh's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("kubeharness: locate the regomesh module: %w", err)
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(mod), "module github.com/regomesh/regomesh\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no regomesh go.mod above the working directory: set %s to the directory of kube-apiserver", ErrNoBinaries, BinEnv)
		}
		dir = parent
	}
}

// pickPorts is freePorts; a test replaces it to hand out a port in use.
var pickPorts = freePorts

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago: all n are held open together, so none is handed out twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubeharness: find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
