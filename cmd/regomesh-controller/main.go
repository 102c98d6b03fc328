// Command regomesh-controller is the control plane: it watches the
// cluster (namespaces, pods, services, waypoint Gateways, Istio security
// resources), builds the state every ztunnel and waypoint needs and the
// policy bundles translated from the Istio resources, and writes their
// status. Until the proxies' stream exists, it serves what it built as
// JSON on the admin endpoint (/debug/state).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/regomesh/regomesh/controller"
)

// config is every flag; each has a default fit for a cluster.
type config struct {
	kubeconfig  string
	controller  controller.Config
	adminAddr   string
	adminExpose bool
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("regomesh-controller", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file of the cluster to watch (default: the pod's in-cluster service account)")
	fs.StringVar(&c.controller.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh's workload identities")
	fs.StringVar(&c.controller.RootNamespace, "root-namespace", "istio-system", "Istio's root namespace: policies there without a selector apply mesh-wide")
	fs.StringVar(&c.controller.ClusterDomain, "cluster-domain", "cluster.local", "DNS suffix of service hostnames (<name>.<namespace>.svc.<cluster domain>)")
	fs.DurationVar(&c.controller.Debounce, "debounce", 100*time.Millisecond, "how long changes are gathered after the first before the state and bundles are rebuilt")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15014", "admin endpoint (/debug/state: every workload, service and policy): a loopback address unless --admin-expose")
	fs.BoolVar(&c.adminExpose, "admin-expose", false, "let --admin-addr bind a non-loopback address; anyone who reaches it reads the mesh's whole state")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.controller.Debounce <= 0 {
		return c, errors.New("--debounce must be positive")
	}
	if !c.adminExpose {
		if err := checkLoopback(c.adminAddr); err != nil {
			return c, fmt.Errorf("--admin-addr %s: %w", c.adminAddr, err)
		}
	}
	return c, nil
}

// checkLoopback accepts host:port whose host is a loopback address or
// "localhost". An empty host would listen on every address.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return errors.New("the admin endpoint shows every workload, service and policy of the mesh, so it binds a loopback address only (127.0.0.1, ::1 or localhost); pass --admin-expose to bind it elsewhere on purpose")
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "regomesh-controller:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("tcp", cfg.adminAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "regomesh-controller: admin endpoint:", err)
		os.Exit(1)
	}
	if err := run(ctx, cfg, ln); err != nil {
		slog.Error("regomesh-controller stopped", "error", err)
		os.Exit(1)
	}
}

// run watches the cluster and serves the admin endpoint on ln until ctx
// ends.
func run(ctx context.Context, cfg config, ln net.Listener) error {
	defer ln.Close()
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig) // both empty: in-cluster
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	debug := &controller.Debug{}
	also := cfg.controller.Publish // tests' hook; nil from the flags
	cfg.controller.Publish = func(u *controller.Update) {
		debug.Set(u)
		if also != nil {
			also(u)
		}
	}
	cfg.controller.Logger = slog.Default().With("component", "controller")
	c, err := controller.New(rc, cfg.controller)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /debug/state", debug)
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- admin.Serve(ln) }()
	slog.Info("regomesh-controller started", "admin", ln.Addr().String(), "trust_domain", cfg.controller.TrustDomain)
	runErr := c.Run(ctx)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = admin.Shutdown(shutdownCtx) // Run has ended: nothing more to serve
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return errors.Join(runErr, fmt.Errorf("admin endpoint: %w", err))
	}
	return runErr
}
