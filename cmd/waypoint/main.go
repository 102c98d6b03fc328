// Command waypoint is regomesh's L7 proxy for a namespace or service
// account: it terminates the HBONE tunnels ztunnels send it, decides every
// HTTP and gRPC request with Rego compiled from OPA bundles, and tunnels
// allowed requests to the endpoints' ztunnels with its own SVID, which it
// gets from the SPIRE agent's Workload API like any other workload.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/regomesh/regomesh/internal/adminaddr"
	"github.com/regomesh/regomesh/internal/policysource"
)

// config is every flag; each has a default fit for a waypoint pod.
type config struct {
	trustDomain   string
	localConfig   string
	spireSocket   string
	spireTimeout  time.Duration
	hboneAddr     string
	adminAddr     string
	adminExpose   bool
	metricsAddr   string
	readinessAddr string
	drainTimeout  time.Duration
	statePoll     time.Duration
	logLevel      string
	accessLog     string
	decisionLog   string
	// bundleFlags are the policy's flags (--bundle, --opa-config, the
	// controller's bundles, --shadow-bundle: policysource.Flags.Register);
	// shadowLog is where the shadow set's disagreements go
	// (docs/decision-logs.md#shadow-policy).
	bundleFlags   policysource.Flags
	shadowLog     string
	requestAuthn  stringList
	gateway       string
	rootNamespace string
	jwksRefresh   time.Duration
	routes        stringList
	clusterDomain string

	// controller is the alternative to localConfig: the state stream.
	controller         string
	controllerIdentity string
	controllerTimeout  time.Duration
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.StringVar(&c.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	fs.StringVar(&c.localConfig, "local-config", "", "YAML (or JSON) file of workloads and services, the same file ztunnel reads (reloaded on change); this or --controller")
	fs.StringVar(&c.controller, "controller", "", "HOST:PORT of regomesh-controller's state stream (delta xDS over mutual TLS, with the waypoint's SVID); this or --local-config")
	fs.StringVar(&c.controllerIdentity, "controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/regomesh-system/sa/regomesh-controller)")
	fs.DurationVar(&c.controllerTimeout, "controller-timeout", 30*time.Second, "with --controller: how long to wait at start for the first state")
	fs.StringVar(&c.spireSocket, "spire-workload-socket", "/run/spire/agent/public/api.sock", "the SPIRE agent's Workload API socket, where the waypoint gets its own SVID")
	fs.DurationVar(&c.spireTimeout, "spire-timeout", 30*time.Second, "how long to wait at start for the first SVID from the Workload API")
	fs.StringVar(&c.hboneAddr, "hbone-addr", ":15008", "HBONE listener (tunnels from ztunnels)")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (config dump, log level, pprof): a loopback address unless --admin-expose")
	fs.BoolVar(&c.adminExpose, "admin-expose", false, "let --admin-addr bind a non-loopback address; anyone who reaches it can change the log level and profile the waypoint")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics endpoint (read-only)")
	fs.StringVar(&c.readinessAddr, "readiness-addr", ":15021", "readiness endpoint (/healthz/ready, for the kubelet's probe; read-only)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long requests in flight may finish before connections are closed")
	fs.DurationVar(&c.statePoll, "state-poll", time.Second, "how often --local-config is checked for changes")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error (adjustable at runtime on the admin endpoint)")
	fs.StringVar(&c.accessLog, "access-log", "-", "JSON access log, one line per request: a file, - for stdout, or off")
	fs.StringVar(&c.decisionLog, "decision-log", "", "JSON-lines decision log in OPA's shape (off when empty); to upload decisions to an OPA decision-log service, configure decision_logs in --opa-config (docs/decision-logs.md)")
	fs.StringVar(&c.shadowLog, "shadow-log", "", "JSON-lines file of the decisions the --shadow-bundle set decides otherwise, in the --decision-log shape, for regomesh policy replay --log (off when empty)")
	fs.Var(&c.requestAuthn, "request-authentication", "Kubernetes YAML file or directory of Istio RequestAuthentications whose JWTs the waypoint validates (repeatable; reloaded on change, the last good set kept); see docs/request-authentication.md")
	fs.StringVar(&c.gateway, "gateway", "", "NAMESPACE/NAME of this waypoint's Gateway: RequestAuthentications whose targetRefs name it apply")
	fs.StringVar(&c.rootNamespace, "root-namespace", "istio-system", "Istio root namespace: its RequestAuthentications without a selector apply mesh-wide")
	fs.Var(&c.routes, "routes", "Kubernetes YAML file or directory of Gateway API HTTPRoutes attached to Services (parentRefs of kind Service) and Istio VirtualServices (hosts naming Services), which route their requests, with retries and faults (repeatable; reloaded on change, the last good set kept; where both route a Service's port, HTTPRoutes win); see docs/waypoint.md")
	fs.StringVar(&c.clusterDomain, "cluster-domain", "cluster.local", "DNS suffix of Service hostnames (<name>.<namespace>.svc.<cluster-domain>), for HTTPRoutes and VirtualServices")
	fs.DurationVar(&c.jwksRefresh, "jwks-refresh", 20*time.Minute, "how often each jwksUri is fetched again (a failed fetch is retried sooner, and the last good key set kept)")
	c.bundleFlags.Register(fs, policysource.Proxy{Name: "the waypoint", Resource: "bundles/waypoint/<namespace>/<gateway> (--gateway)", Shadow: "every request is also decided"})
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if (c.localConfig == "") == (c.controller == "") {
		return c, errors.New("exactly one of --local-config and --controller is required")
	}
	if err := c.checkPolicySource(); err != nil {
		return c, err
	}
	if c.shadowLog != "" && len(c.bundleFlags.Shadow) == 0 {
		return c, errors.New("--shadow-log needs --shadow-bundle: without a shadow set nothing disagrees (docs/decision-logs.md#shadow-policy)")
	}
	if !c.adminExpose {
		if err := adminaddr.CheckLoopback(c.adminAddr, "changes the log level and serves pprof"); err != nil {
			return c, fmt.Errorf("--admin-addr %s: %w", c.adminAddr, err)
		}
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("waypoint stopped", "error", err)
		os.Exit(1)
	}
}
