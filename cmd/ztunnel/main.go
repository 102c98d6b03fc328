// Command ztunnel is the node proxy: it captures the traffic of the node's
// enrolled pods, tunnels it over HBONE with the pods' SPIFFE SVIDs from
// SPIRE, and enforces L4 policy compiled from OPA bundles.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/adminaddr"
	"github.com/regomesh/regomesh/internal/policysource"
)

// config is every flag; each has a default fit for a node.
type config struct {
	node          string
	trustDomain   string
	localConfig   string
	spireSocket   string
	cniSocket     string
	podsFile      string
	adminAddr     string
	adminExpose   bool
	metricsAddr   string
	readinessAddr string
	drainTimeout  time.Duration
	statePoll     time.Duration
	logLevel      string
	accessLog     string
	decisionLog   string
	hbone         hboneFlags
	// bundleFlags are the policy's flags (--bundle, --opa-config, the
	// controller's bundles, --shadow-bundle: policysource.Flags.Register);
	// shadowLog is where the shadow set's disagreements go
	// (docs/decision-logs.md#shadow-policy).
	bundleFlags policysource.Flags
	shadowLog   string

	// controller is the alternative to localConfig: the state stream,
	// with ztunnel's own SVID from the Workload API.
	controller          string
	controllerIdentity  string
	controllerTimeout   time.Duration
	spireWorkloadSocket string
}

// hboneFlags bound what HBONE clients can make ztunnel hold: per pod
// (each pod has its own server on 15008) and for the node.
type hboneFlags struct {
	pod           hbone.Limits
	podWindowMiB  int64
	node          hbone.Limits
	nodeWindowMiB int64
	idleTimeout   time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.StringVar(&c.node, "node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME); pods of other nodes are refused")
	fs.StringVar(&c.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	fs.StringVar(&c.localConfig, "local-config", "", "YAML (or JSON) file of workloads and services (reloaded on change); this or --controller")
	fs.StringVar(&c.controller, "controller", "", "HOST:PORT of regomesh-controller's state stream (delta xDS over mutual TLS); this or --local-config")
	fs.StringVar(&c.controllerIdentity, "controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/regomesh-system/sa/regomesh-controller)")
	fs.DurationVar(&c.controllerTimeout, "controller-timeout", 30*time.Second, "with --controller: how long to wait at start for ztunnel's own SVID and the first state")
	fs.StringVar(&c.spireWorkloadSocket, "spire-workload-socket", "/run/spire/agent/public/api.sock", "with --controller: the SPIRE agent's Workload API socket, where ztunnel gets its own SVID (spiffe://<trust-domain>/regomesh/ztunnel/<node>)")
	fs.StringVar(&c.spireSocket, "spire-admin-socket", "/run/spire/admin/admin.sock", "SPIRE agent admin socket (Delegated Identity API)")
	fs.StringVar(&c.cniSocket, "cni-socket", "/var/run/regomesh/ztunnel.sock", "unix socket regomesh-cni enrols pods through")
	fs.StringVar(&c.podsFile, "pods-file", "/var/run/regomesh/pods.json", "where enrolled pods are recorded, so a restart restores them")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (config dump, log level, pprof): a loopback address unless --admin-expose")
	fs.BoolVar(&c.adminExpose, "admin-expose", false, "let --admin-addr bind a non-loopback address; anyone who reaches it can change the log level and profile ztunnel")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics endpoint (read-only; in ztunnel's own network namespace, not in pods')")
	fs.StringVar(&c.readinessAddr, "readiness-addr", ":15021", "readiness endpoint (/healthz/ready, for the kubelet's probe; read-only)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish before they are closed")
	fs.DurationVar(&c.statePoll, "state-poll", time.Second, "how often --local-config is checked for changes")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error (adjustable at runtime on the admin endpoint)")
	fs.StringVar(&c.accessLog, "access-log", "-", "JSON access log: a file, - for stdout, or off")
	fs.StringVar(&c.decisionLog, "decision-log", "", "JSON-lines decision log in OPA's shape (off when empty); to upload decisions to an OPA decision-log service, configure decision_logs in --opa-config (docs/decision-logs.md)")
	fs.StringVar(&c.shadowLog, "shadow-log", "", "JSON-lines file of the decisions the --shadow-bundle set decides otherwise, in the --decision-log shape, for regomesh policy replay --log (off when empty)")
	c.bundleFlags.Register(fs, policysource.Proxy{Name: "ztunnel", Resource: "bundles/mesh", Shadow: "every decision is also taken"})
	c.hbone.register(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if (c.localConfig == "") == (c.controller == "") {
		return c, fmt.Errorf("exactly one of --local-config and --controller is required")
	}
	if err := c.checkPolicySource(); err != nil {
		return c, err
	}
	if c.shadowLog != "" && len(c.bundleFlags.Shadow) == 0 {
		return c, fmt.Errorf("--shadow-log needs --shadow-bundle: without a shadow set nothing disagrees (docs/decision-logs.md#shadow-policy)")
	}
	if !c.adminExpose {
		if err := adminaddr.CheckLoopback(c.adminAddr, "changes the log level and serves pprof"); err != nil {
			return c, fmt.Errorf("--admin-addr %s: %w", c.adminAddr, err)
		}
	}
	return c, nil
}

func (h *hboneFlags) register(fs *flag.FlagSet) {
	d, n := hbone.DefaultLimits, hbone.DefaultNodeLimits
	fs.IntVar(&h.pod.Handshakes, "hbone-handshakes", d.Handshakes, "HBONE handshakes in progress per pod; at the cap the oldest is dropped for the new one")
	fs.IntVar(&h.pod.HandshakesPerIP, "hbone-handshakes-per-ip", d.HandshakesPerIP, "HBONE handshakes in progress per pod from one source address once half of --hbone-handshakes are taken; more are closed at once")
	fs.IntVar(&h.pod.Conns, "hbone-conns", d.Conns, "HBONE connections per pod; more are refused with GOAWAY")
	fs.IntVar(&h.pod.ConnsPerPeer, "hbone-conns-per-peer", d.ConnsPerPeer, "HBONE connections per pod from one client identity (SPIFFE ID)")
	fs.Int64Var(&h.podWindowMiB, "hbone-window-budget-mib", d.WindowBytes>>20, "MiB of receive window per pod, all HBONE connections together: the memory clients can fill with data not yet read")
	fs.IntVar(&h.node.Handshakes, "hbone-node-handshakes", n.Handshakes, "HBONE handshakes in progress on the node, all pods together")
	fs.IntVar(&h.node.Conns, "hbone-node-conns", n.Conns, "HBONE connections on the node, all pods together")
	fs.Int64Var(&h.nodeWindowMiB, "hbone-node-window-budget-mib", n.WindowBytes>>20, "MiB of HBONE receive window on the node, all pods together")
	fs.DurationVar(&h.idleTimeout, "hbone-idle-timeout", 0, "close an HBONE connection that has carried no tunnel this long (default: 5m for those ztunnel opens, 10m for those it accepts; negative: never)")
}

// conn is the HBONE configuration of every pod's server and pool: the
// node limits are shared by all of them, and refusals are counted.
func (h hboneFlags) conn(onRefuse func(hbone.Refusal)) hbone.ConnConfig {
	pod, node := h.pod, h.node
	pod.WindowBytes, node.WindowBytes = h.podWindowMiB<<20, h.nodeWindowMiB<<20
	return hbone.ConnConfig{IdleTimeout: h.idleTimeout, Limits: pod, Node: hbone.NewNodeLimits(node), OnRefuse: onRefuse}
}

// servicePorts are the ports of the admin, metrics and readiness
// endpoints, which ztunnel refuses as connection destinations.
func (c config) servicePorts() []uint16 {
	var ports []uint16
	for _, addr := range []string{c.adminAddr, c.metricsAddr, c.readinessAddr} {
		_, port, err := net.SplitHostPort(addr)
		if n, perr := strconv.ParseUint(port, 10, 16); err == nil && perr == nil {
			ports = append(ports, uint16(n))
		}
	}
	return ports
}

// defaultGCPercent is ztunnel's GOGC unless the environment sets one. The
// live heap is small (a few MB of state, policy and tunnels) and the data
// path does not allocate per byte, so collecting twice as often costs
// little CPU, while Go's default (100: the heap grows to twice the live
// heap before a collection) keeps ~2 MB more resident: with 1,000
// workloads and 1,000 tunnels, VmRSS 37.3-37.8 MB against 38.3-40.3 MB
// (go run ./test/bench -memory-only, GOGC=50 vs unset, three runs each).
const defaultGCPercent = 50

// setGCPercent applies defaultGCPercent unless GOGC says otherwise: set
// to "off" or a number. The runtime reads an empty or unparsable GOGC as
// its default, and so does ztunnel.
func setGCPercent(lookupEnv func(string) (string, bool)) {
	v, _ := lookupEnv("GOGC")
	if _, err := strconv.Atoi(v); err == nil || v == "off" {
		return
	}
	debug.SetGCPercent(defaultGCPercent)
}

func main() {
	setGCPercent(os.LookupEnv)
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("ztunnel stopped", "error", err)
		os.Exit(1)
	}
}
