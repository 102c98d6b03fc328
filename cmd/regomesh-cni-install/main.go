// Command regomesh-cni-install puts regomesh-cni into the node's CNI
// chain and keeps it there, as the node agent's DaemonSet runs it with the
// host's CNI directories mounted; with --uninstall it takes it out once.
// docs/cni.md has the details.
//
// It is a binary of its own so that the plugin, which the container
// runtime starts for every pod, stays small and quick to start: this one
// carries a Kubernetes client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/regomesh/regomesh/ztunnel/cni/install"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run is the command with its arguments; it returns the exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("regomesh-cni-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg install.Config
	fs.StringVar(&cfg.BinDir, "cni-bin-dir", "/host/opt/cni/bin", "the node's CNI binary directory, as mounted in this container")
	fs.StringVar(&cfg.ConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted in this container")
	fs.StringVar(&cfg.Plugin, "plugin", "/opt/cni/bin/regomesh-cni", "the plugin binary to install (the image's)")
	fs.StringVar(&cfg.ZtunnelSocket, "ztunnel-socket", "/var/run/regomesh/ztunnel.sock", "ztunnel's enrolment socket as the plugin reaches it on the node (the plugin runs on the host, not in this container)")
	fs.DurationVar(&cfg.Poll, "poll", 2*time.Second, "how often the CNI chain and the binary are checked and mended")
	onExit := fs.String("on-exit", "auto", "at exit: auto (remove the plugin only when this DaemonSet is gone or being deleted), keep, or remove")
	namespace := fs.String("daemonset-namespace", os.Getenv("POD_NAMESPACE"), "namespace of this installer's DaemonSet, for --on-exit=auto (default $POD_NAMESPACE)")
	daemonset := fs.String("daemonset", "regomesh-cni", "name of this installer's DaemonSet, for --on-exit=auto")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for --on-exit=auto; empty means the pod's service account")
	uninstall := fs.Bool("uninstall", false, "remove the plugin from the CNI chain and the binary directory, then exit (after an uninstall the installer could not tell from a restart)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "regomesh-cni-install: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg.Logger = log
	if *uninstall {
		if err := install.Remove(cfg); err != nil {
			fmt.Fprintf(stderr, "regomesh-cni-install: %v\n", err)
			return 1
		}
		log.Info("regomesh-cni removed from the CNI chain and binary directory", "conf_dir", cfg.ConfDir, "bin_dir", cfg.BinDir)
		return 0
	}
	uninstalling, err := exitPolicy(*onExit, *kubeconfig, *namespace, *daemonset)
	if err != nil {
		fmt.Fprintf(stderr, "regomesh-cni-install: %v (docs/cni.md)\n", err)
		return 2
	}
	if err := install.Run(ctx, cfg, uninstalling); err != nil {
		fmt.Fprintf(stderr, "regomesh-cni-install: %v\n", err)
		return 1
	}
	return 0
}

// exitPolicy is what install.Run asks at exit, by --on-exit.
func exitPolicy(onExit, kubeconfig, namespace, daemonset string) (func(context.Context) (bool, error), error) {
	switch onExit {
	case "keep":
		return func(context.Context) (bool, error) { return false, nil }, nil
	case "remove":
		return func(context.Context) (bool, error) { return true, nil }, nil
	case "auto":
	default:
		return nil, fmt.Errorf("--on-exit=%q: want auto, keep or remove", onExit)
	}
	if namespace == "" {
		return nil, errors.New("--on-exit=auto needs the DaemonSet's namespace: set --daemonset-namespace or $POD_NAMESPACE")
	}
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("--on-exit=auto reads the DaemonSet from the API server: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return install.DaemonSetGone(kube, namespace, daemonset), nil
}
