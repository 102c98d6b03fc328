// Command regomesh-controller is the control plane: it watches the
// cluster (namespaces, pods, services, waypoint Gateways, Istio security
// resources), builds the state every ztunnel and waypoint needs and the
// policy bundles translated from the Istio resources, and writes their
// status. It streams the state to every ztunnel and waypoint (delta xDS
// over mutual TLS with its SVID, --xds-addr; docs/state-stream.md), and
// serves it as JSON on the admin endpoint (/debug/state).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/adminaddr"
)

// config is every flag; each has a default fit for a cluster.
type config struct {
	kubeconfig   string
	controller   controller.Config
	adminAddr    string
	adminExpose  bool
	xdsAddr      string
	spireSocket  string
	spireTimeout time.Duration
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
	fs.StringVar(&c.xdsAddr, "xds-addr", ":15012", "the state stream ztunnels and waypoints subscribe to (delta xDS over mutual TLS, each proxy authenticated by its SVID; docs/state-stream.md); empty: no stream")
	fs.StringVar(&c.spireSocket, "spire-workload-socket", "/run/spire/agent/public/api.sock", "the SPIRE agent's Workload API, where the controller gets the SVID it presents on the stream and the bundles it verifies proxies with")
	fs.DurationVar(&c.spireTimeout, "spire-timeout", 30*time.Second, "how long to wait at start for the first SVID from the Workload API")
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
		if err := adminaddr.CheckLoopback(c.adminAddr, "shows every workload, service and policy of the mesh"); err != nil {
			return c, fmt.Errorf("--admin-addr %s: %w", c.adminAddr, err)
		}
	}
	return c, nil
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
	var xdsLn net.Listener
	if cfg.xdsAddr != "" {
		if xdsLn, err = net.Listen("tcp", cfg.xdsAddr); err != nil {
			fmt.Fprintln(os.Stderr, "regomesh-controller: --xds-addr:", err)
			os.Exit(1)
		}
	}
	if err := run(ctx, cfg, ln, xdsLn); err != nil {
		slog.Error("regomesh-controller stopped", "error", err)
		os.Exit(1)
	}
}

// run watches the cluster, serves the admin endpoint on ln and the state
// stream on xdsLn (nil: none) until ctx ends.
func run(ctx context.Context, cfg config, ln, xdsLn net.Listener) error {
	defer ln.Close()
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig) // both empty: in-cluster
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	var stream *xds.Server
	if xdsLn != nil {
		var stop func()
		if stream, stop, err = serveStream(ctx, cfg, xdsLn); err != nil {
			return err
		}
		defer stop()
	}
	debug := &controller.Debug{}
	also := cfg.controller.Publish // tests' hook; nil from the flags
	cfg.controller.Publish = func(u *controller.Update) {
		debug.Set(u)
		if stream != nil {
			stream.Update(u.Snapshot)
		}
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

// serveStream serves the state stream on l with the controller's own SVID
// from the Workload API; stop ends the streams and waits for them.
func serveStream(ctx context.Context, cfg config, l net.Listener) (*xds.Server, func(), error) {
	td, err := spiffeid.TrustDomainFromString(cfg.controller.TrustDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("--trust-domain: %w", err)
	}
	wait, cancel := context.WithTimeout(ctx, cfg.spireTimeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(wait, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.spireSocket)))
	if err != nil {
		return nil, nil, fmt.Errorf("no SVID from the SPIRE agent's Workload API at %s within %s: %w (is the agent running, the socket mounted, and an entry registered for the controller?)",
			cfg.spireSocket, cfg.spireTimeout, err)
	}
	stream := xds.New(xds.Config{TrustDomain: td, Logger: slog.Default()})
	gs := xds.NewGRPCServer(stream, source, source)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(l)
	}()
	slog.Info("state stream serving", "addr", l.Addr().String())
	return stream, func() {
		gs.Stop()
		<-served
		stream.Wait()
		source.Close()
	}, nil
}
