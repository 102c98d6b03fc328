// Command regomesh-controller is the control plane: it watches the
// cluster (namespaces, pods, services, waypoint Gateways, Istio security
// resources), builds the state every ztunnel and waypoint needs and the
// policy bundles translated from the Istio resources, and writes their
// status. It streams the state to every ztunnel and waypoint (delta xDS
// over mutual TLS with its SVID, --xds-addr; docs/state-stream.md),
// serves the bundles, signed, over the OPA bundle service protocol
// (--bundle-addr; the stream says which revision is current), serves
// the state as JSON on the admin endpoint (/debug/state) with what each
// proxy has ACKed and refused (/debug/proxies, `regomesh status`), and, with
// --waypoint-template, deploys a waypoint for every Gateway of class
// istio-waypoint; with --spire-server-socket, it registers the enrolled
// workloads' SPIRE entries.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/adminaddr"
	"github.com/regomesh/regomesh/spire"
)

// config is every flag; each has a default fit for a cluster.
type config struct {
	kubeconfig   string
	controller   controller.Config
	adminAddr    string
	readyAddr    string
	logLevel     string
	adminExpose  bool
	xdsAddr      string
	spireSocket  string
	spireTimeout time.Duration
	bundles      bundleFlags
	leader       leaderFlags
	waypoints    waypointFlags
	entries      entryFlags
}

// entryFlags say whether the controller registers SPIRE entries for the
// enrolled workloads, and how (docs/spire-registration.md).
type entryFlags struct {
	socket   string
	cluster  string
	agentID  string
	resync   time.Duration
	template *template.Template // agentID, parsed
}

// waypointFlags say whether the controller deploys waypoints, and from
// which template.
type waypointFlags struct {
	template string
	resync   time.Duration
}

// leaderFlags say whether and how replicas elect the one writing status.
type leaderFlags struct {
	elect     bool
	namespace string
	name      string
	identity  string
}

// bundleFlags say how bundles are served.
type bundleFlags struct {
	addr       string
	signingKey string
	keyID      string
	algorithm  string
	unsigned   bool
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("regomesh-controller", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file of the cluster to watch (default: the pod's in-cluster service account)")
	fs.StringVar(&c.controller.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh's workload identities")
	fs.StringVar(&c.controller.RootNamespace, "root-namespace", "istio-system", "Istio's root namespace: policies there without a selector apply mesh-wide")
	fs.StringVar(&c.controller.ClusterDomain, "cluster-domain", "cluster.local", "DNS suffix of service hostnames (<name>.<namespace>.svc.<cluster domain>)")
	fs.DurationVar(&c.controller.Debounce, "debounce", 100*time.Millisecond, "how long changes are gathered after the first before the state and bundles are rebuilt")
	fs.StringVar(&c.controller.RegoSelector, "rego-configmap-selector", controller.DefaultRegoSelector, "label selector of the ConfigMaps whose .rego keys the controller adds to every bundle, namespace N's in packages under mesh.policies.N (docs/user-rego.md)")
	fs.Func("rego-configmap-namespaces", "comma-separated namespaces whose selected ConfigMaps may add Rego, which decides for the whole mesh (default: the root namespace alone; docs/user-rego.md)", func(v string) error {
		c.controller.RegoNamespaces = nil
		for ns := range strings.SplitSeq(v, ",") {
			if ns = strings.TrimSpace(ns); ns == "" {
				return errors.New("an empty namespace")
			}
			c.controller.RegoNamespaces = append(c.controller.RegoNamespaces, ns)
		}
		return nil
	})
	fs.StringVar(&c.readyAddr, "readiness-addr", ":15021", "readiness endpoint (GET /healthz/ready: 200 once the controller has synced with the API server and published its first state, 503 before); empty: none")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15014", "admin endpoint (/debug/state: every workload, service and policy; /debug/proxies: what each proxy has ACKed and refused, read by regomesh status): a loopback address unless --admin-expose")
	fs.BoolVar(&c.adminExpose, "admin-expose", false, "let --admin-addr bind a non-loopback address; anyone who reaches it reads the mesh's whole state")
	fs.StringVar(&c.xdsAddr, "xds-addr", ":15012", "the state stream ztunnels and waypoints subscribe to (delta xDS over mutual TLS, each proxy authenticated by its SVID; docs/state-stream.md); empty: no stream")
	fs.StringVar(&c.spireSocket, "spire-workload-socket", "/run/spire/agent/public/api.sock", "the SPIRE agent's Workload API, where the controller gets the SVID it presents on the stream and the bundles it verifies proxies with")
	fs.DurationVar(&c.spireTimeout, "spire-timeout", 30*time.Second, "how long to wait at start for the first SVID from the Workload API")
	fs.StringVar(&c.bundles.addr, "bundle-addr", ":15013", "where the policy bundles are served over the OPA bundle service protocol (HTTPS, each proxy authenticated by its SVID: /bundles/mesh, /bundles/waypoint/<namespace>/<gateway>; docs/state-stream.md); empty: no bundles")
	fs.StringVar(&c.bundles.signingKey, "bundle-signing-key", "", "PEM private key file every bundle is signed with (in Kubernetes, a Secret mounted as a file); required with --bundle-addr unless --bundle-unsigned")
	fs.StringVar(&c.bundles.keyID, "bundle-signing-key-id", bundleserver.DefaultKeyID, "the key ID each signature names (its kid): the ID verifiers hold the public key under")
	fs.StringVar(&c.bundles.algorithm, "bundle-signing-algorithm", bundleserver.DefaultAlgorithm, "signature algorithm: RS256, RS384, RS512, PS256, PS384, PS512 (an RSA key), ES256, ES384, ES512 (an ECDSA key)")
	fs.BoolVar(&c.bundles.unsigned, "bundle-unsigned", false, "serve bundles without signatures, on purpose: proxies that verify signatures (--verification-key) refuse them")
	host, _ := os.Hostname()
	fs.BoolVar(&c.leader.elect, "leader-elect", false, "elect, with a Lease, the one replica that writes AuthorizationPolicy status; every replica serves the stream and bundles (required with more than one replica)")
	fs.StringVar(&c.leader.namespace, "leader-elect-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Lease (default $POD_NAMESPACE)")
	fs.StringVar(&c.leader.name, "leader-elect-name", "regomesh-controller", "name of the Lease")
	fs.StringVar(&c.leader.identity, "leader-elect-identity", cmp.Or(os.Getenv("POD_NAME"), host), "this replica's name in the Lease (default $POD_NAME, else the host name)")
	fs.StringVar(&c.waypoints.template, "waypoint-template", "", "file of the Go template (actions between [[ and ]]) of the objects the leader applies for every Gateway of class istio-waypoint, and writes the Gateway's status (charts/README.md#waypoints); empty: deploy no waypoints")
	fs.DurationVar(&c.waypoints.resync, "waypoint-resync", 5*time.Minute, "how often every waypoint is applied again although nothing changed: what undoes a hand edit of a waypoint's objects")
	fs.StringVar(&c.entries.socket, "spire-server-socket", "", "register a SPIRE entry for every enrolled (namespace, service account, node) through the SPIRE server API on this socket (the server's socket_path, shared with the controller), and delete them when their workloads go; empty: register none, as with spire-controller-manager (docs/spire-registration.md)")
	fs.StringVar(&c.entries.cluster, "spire-cluster-name", "", "with --spire-server-socket: the cluster's name in the SPIRE server's k8s_psat configuration; node aliases select agents by it, and the mesh's entry IDs begin regomesh.<name>.")
	fs.StringVar(&c.entries.agentID, "spire-agent-id", "", "with --spire-server-socket: template of the SPIFFE ID of a node's SPIRE agent, given {{.TrustDomain}}, {{.Cluster}} and {{.Node}}, to parent the node's entries to; empty: parent them to a node alias, spiffe://<trust domain>/regomesh/node/<cluster>/<node>, selecting agents by k8s_psat:cluster and k8s_psat:agent_node_name")
	fs.DurationVar(&c.entries.resync, "spire-resync", 5*time.Minute, "with --spire-server-socket: how often the entries are compared with the server's although nothing changed: what restores an entry deleted by hand")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.leader.elect {
		if c.leader.namespace == "" || c.leader.identity == "" {
			return c, errors.New("--leader-elect needs --leader-elect-namespace (or $POD_NAMESPACE) and --leader-elect-identity (or $POD_NAME)")
		}
		c.controller.LeaderElection = &controller.LeaderElection{Namespace: c.leader.namespace, Name: c.leader.name, Identity: c.leader.identity}
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.controller.Debounce <= 0 {
		return c, errors.New("--debounce must be positive")
	}
	if c.waypoints.resync <= 0 {
		return c, errors.New("--waypoint-resync must be positive")
	}
	if c.bundles.addr != "" {
		switch {
		case c.bundles.signingKey == "" && !c.bundles.unsigned:
			return c, errors.New("--bundle-addr serves policy bundles: give --bundle-signing-key FILE (a PEM private key), or --bundle-unsigned to serve them unsigned on purpose, or --bundle-addr= to serve none (docs/state-stream.md)")
		case c.bundles.signingKey != "" && c.bundles.unsigned:
			return c, errors.New("--bundle-signing-key and --bundle-unsigned: choose one")
		}
	}
	if err := new(slog.LevelVar).UnmarshalText([]byte(c.logLevel)); err != nil {
		return c, fmt.Errorf("--log-level: %w", err)
	}
	if err := checkEntryFlags(&c); err != nil {
		return c, err
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
	level := new(slog.LevelVar)
	_ = level.UnmarshalText([]byte(cfg.logLevel)) // checked by parseFlags
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var ls listeners
	for _, l := range []struct {
		addr, flag string
		to         *net.Listener
	}{{cfg.adminAddr, "--admin-addr", &ls.admin}, {cfg.readyAddr, "--readiness-addr", &ls.ready}, {cfg.xdsAddr, "--xds-addr", &ls.xds}, {cfg.bundles.addr, "--bundle-addr", &ls.bundles}} {
		if l.addr == "" {
			continue
		}
		if *l.to, err = net.Listen("tcp", l.addr); err != nil {
			fmt.Fprintln(os.Stderr, "regomesh-controller:", l.flag+":", err)
			os.Exit(1)
		}
	}
	if err := run(ctx, cfg, ls); err != nil {
		slog.Error("regomesh-controller stopped", "error", err)
		os.Exit(1)
	}
}

// listeners are where the controller serves: the admin endpoint, and the
// readiness endpoint, the state stream and the bundles when not nil.
type listeners struct {
	admin, ready, xds, bundles net.Listener
}

// run watches the cluster and serves on ls until ctx ends.
func run(ctx context.Context, cfg config, ls listeners) error {
	defer ls.admin.Close()
	if ls.ready != nil {
		defer ls.ready.Close()
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig) // both empty: in-cluster
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if cfg.waypoints.template != "" {
		if cfg.controller.Waypoints, err = readWaypointTemplate(cfg.waypoints); err != nil {
			return err
		}
	}
	var signer *bundleserver.Signer
	if ls.bundles != nil && !cfg.bundles.unsigned {
		if signer, err = bundleserver.ReadSigner(cfg.bundles.signingKey, cfg.bundles.algorithm, cfg.bundles.keyID); err != nil {
			return fmt.Errorf("--bundle-signing-key: %w", err)
		}
	}
	var stream *xds.Server
	var bundles *bundleserver.Server
	if ls.xds != nil || ls.bundles != nil {
		var stop func()
		if stream, bundles, stop, err = serveProxies(ctx, cfg, ls, signer); err != nil {
			return err
		}
		defer stop()
	}
	debug := &controller.Debug{}
	var c *controller.Controller
	var entries *controller.SPIREEntries
	if cfg.entries.socket != "" {
		var closeEntries func()
		if entries, closeEntries, err = registerEntries(cfg, func() bool { return c.Leading() }); err != nil {
			return err
		}
		defer closeEntries()
	}
	var synced atomic.Bool
	also := cfg.controller.Publish // tests' hook; nil from the flags
	cfg.controller.Publish = func(u *controller.Update) {
		debug.Set(u)
		if entries != nil {
			entries.Set(u)
		}
		if stream != nil {
			stream.Update(u.Snapshot) // first: it identifies the waypoints reading bundles
		}
		if bundles != nil {
			bundles.Update(u)
			stream.UpdateBundles(bundles.Revisions()) // once served, so a proxy told of one can fetch it
		}
		synced.Store(true) // ready once the first state is out
		if also != nil {
			also(u)
		}
	}
	cfg.controller.Logger = slog.Default().With("component", "controller")
	if c, err = controller.New(rc, cfg.controller); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /debug/state", debug)
	if entries != nil {
		mux.Handle("GET /debug/spire-entries", entries)
		entriesCtx, stopEntries := context.WithCancel(ctx)
		entriesDone := make(chan struct{})
		go func() { defer close(entriesDone); entries.Run(entriesCtx) }()
		defer func() { stopEntries(); <-entriesDone }()
	}
	mux.Handle("GET "+xds.StatusPath, proxyStatus(stream))
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 2)
	go func() { served <- admin.Serve(ls.admin) }()
	readiness := &http.Server{Handler: readyHandler(&synced), ReadHeaderTimeout: 10 * time.Second}
	if ls.ready != nil {
		go func() { served <- readiness.Serve(ls.ready) }()
	} else {
		served <- http.ErrServerClosed
	}
	slog.Info("regomesh-controller started", "admin", ls.admin.Addr().String(), "trust_domain", cfg.controller.TrustDomain)
	runErr := c.Run(ctx)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = admin.Shutdown(shutdownCtx) // Run has ended: nothing more to serve
	_ = readiness.Shutdown(shutdownCtx)
	for range 2 {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			runErr = errors.Join(runErr, fmt.Errorf("admin or readiness endpoint: %w", err))
		}
	}
	return runErr
}

// readyHandler answers GET /healthz/ready: 200 once synced, 503 before
// (the controller has not yet listed the cluster and published a state).
func readyHandler(synced *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !synced.Load() {
			http.Error(w, "not ready: the controller has not synced with the API server and published its first state yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// proxyStatus serves, for `regomesh status`, what each proxy has ACKed
// and refused; without a stream there are no proxies, and it says why.
func proxyStatus(stream *xds.Server) http.Handler {
	if stream != nil {
		return stream.StatusHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "this controller serves no proxies: it runs with --xds-addr= and --bundle-addr= (docs/proxy-status.md)", http.StatusNotFound)
	})
}

// checkEntryFlags checks the SPIRE registration flags, and parses
// --spire-agent-id.
func checkEntryFlags(c *config) error {
	e := &c.entries
	if e.socket == "" {
		if e.cluster != "" || e.agentID != "" {
			return errors.New("--spire-cluster-name and --spire-agent-id configure --spire-server-socket, which is not set (docs/spire-registration.md)")
		}
		return nil
	}
	if e.cluster == "" {
		return errors.New("--spire-server-socket needs --spire-cluster-name: the cluster's name in the SPIRE server's k8s_psat configuration (docs/spire-registration.md)")
	}
	if e.resync <= 0 {
		return errors.New("--spire-resync must be positive")
	}
	if err := (controller.NodeAgents{Cluster: e.cluster}).Validate(); err != nil {
		return fmt.Errorf("--spire-cluster-name: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(c.controller.TrustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if e.agentID != "" {
		if e.template, err = controller.ParseAgentIDTemplate(e.agentID, td); err != nil {
			return fmt.Errorf("--spire-agent-id: %w", err)
		}
	}
	return nil
}

// registerEntries prepares the SPIRE registration of --spire-server-socket;
// leading says when this replica writes.
func registerEntries(cfg config, leading func() bool) (*controller.SPIREEntries, func(), error) {
	registrar, err := spire.DialRegistrar(cfg.entries.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("--spire-server-socket: %w", err)
	}
	entries, err := controller.NewSPIREEntries(controller.SPIREEntriesConfig{
		Registrar:   registrar,
		TrustDomain: spiffeid.RequireTrustDomainFromString(cfg.controller.TrustDomain), // checked by parseFlags
		Agents:      controller.NodeAgents{Cluster: cfg.entries.cluster, AgentID: cfg.entries.template},
		Leading:     leading,
		Resync:      cfg.entries.resync,
		Logger:      slog.Default().With("component", "spire-entries"),
	})
	if err != nil {
		registrar.Close()
		return nil, nil, fmt.Errorf("--spire-server-socket: %w", err)
	}
	return entries, func() { registrar.Close() }, nil
}

// readWaypointTemplate reads and checks --waypoint-template: a template
// that cannot make a waypoint stops the controller at start.
func readWaypointTemplate(f waypointFlags) (*controller.WaypointDeployment, error) {
	text, err := os.ReadFile(f.template)
	if err != nil {
		return nil, fmt.Errorf("--waypoint-template: %w", err)
	}
	tmpl, err := controller.ParseWaypointTemplate(string(text))
	if err != nil {
		return nil, fmt.Errorf("--waypoint-template %s: %w", f.template, err)
	}
	return &controller.WaypointDeployment{Template: tmpl, Resync: f.resync}, nil
}

// serveProxies serves the state stream on ls.xds and the bundles on
// ls.bundles (either may be nil) with the controller's own SVID from the
// Workload API. The stream's server exists whenever either is served:
// the bundle server identifies proxies with it. stop ends both and waits
// for them.
func serveProxies(ctx context.Context, cfg config, ls listeners, signer *bundleserver.Signer) (*xds.Server, *bundleserver.Server, func(), error) {
	td, err := spiffeid.TrustDomainFromString(cfg.controller.TrustDomain)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--trust-domain: %w", err)
	}
	wait, cancel := context.WithTimeout(ctx, cfg.spireTimeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(wait, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.spireSocket)))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("no SVID from the SPIRE agent's Workload API at %s within %s: %w (is the agent running, the socket mounted, and an entry registered for the controller?)",
			cfg.spireSocket, cfg.spireTimeout, err)
	}
	stream := xds.New(xds.Config{TrustDomain: td, Logger: slog.Default()})
	var stops []func()
	if ls.xds != nil {
		stops = append(stops, serveStream(stream, source, ls.xds))
	}
	var bundles *bundleserver.Server
	if ls.bundles != nil {
		bundles, err = bundleserver.New(bundleserver.Config{Signer: signer, Unsigned: signer == nil, Proxies: stream, Logger: slog.Default()})
		if err != nil {
			source.Close()
			return nil, nil, nil, err
		}
		stops = append(stops, serveBundles(bundles, td, source, ls.bundles))
	}
	return stream, bundles, func() {
		for _, stop := range stops {
			stop()
		}
		source.Close()
	}, nil
}

// serveStream serves the state stream on l; the returned func ends the
// streams and waits for them.
func serveStream(stream *xds.Server, source *workloadapi.X509Source, l net.Listener) func() {
	gs := xds.NewGRPCServer(stream, source, source)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(l)
	}()
	slog.Info("state stream serving", "addr", l.Addr().String())
	return func() {
		gs.Stop()
		<-served
		stream.Wait()
	}
}

// serveBundles serves the bundles on l; the returned func ends the long
// polls and requests and waits for them.
func serveBundles(bundles *bundleserver.Server, td spiffeid.TrustDomain, source *workloadapi.X509Source, l net.Listener) func() {
	srv := bundleserver.NewHTTPServer(bundles, td, source, source)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
			slog.Error("bundle server stopped", "error", err)
		}
	}()
	slog.Info("bundles serving", "addr", l.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil { // long polls end at once (Close)
			srv.Close() // a response still sending after 5s is cut
		}
		<-served
	}
}
