package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/policy"
)

// demoConfig is what `regomesh demo` reads.
type demoConfig struct {
	// Examples is the directory holding bundle/ and inputs/.
	Examples string
	// Once runs the calls once and exits instead of staying up.
	Once bool
	// WaypointBinary is the cmd/waypoint the waypoint pod runs; empty
	// builds one with the Go toolchain.
	WaypointBinary string
	// Kubernetes drives the mesh from a real kube-apiserver and
	// regomesh-controller (kubeDemo) instead of local files.
	Kubernetes bool
	// ZtunnelBinary is the cmd/ztunnel the nodes run with --kubernetes;
	// empty builds one with the Go toolchain.
	ZtunnelBinary string
}

func newDemoCommand() *cobra.Command {
	var cfg demoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the sample app in a mesh on this machine and show each call's decision",
		Long: `demo starts, on this machine, a real SPIRE server, two "nodes" (network
namespaces) each with a SPIRE agent and a ztunnel, six pods and a
waypoint; the ztunnels capture the pods' traffic with nftables, tunnel it
over HBONE with the pods' SVIDs, and decide every connection with the
example bundle (examples/bundle); the waypoint, with an SVID of its own,
decides every HTTP request to the api service with the same bundle. It
prints each call tried, allowed or denied, and the policy and rule that
decided, then stays up and re-runs the calls whenever the bundle changes,
until Ctrl-C.

It needs root (network namespaces, nftables) and SPIRE in bin/ (make spire).
Without root it shows the policy engine deciding the example inputs instead.

With --kubernetes the same calls run in a mesh driven by a real
kube-apiserver and etcd (bin/, make kube): the pods are Pod objects, the
AuthorizationPolicies of examples/istio are applied through the API server,
and regomesh-controller streams the state and serves the translated policy,
signed, to each node's ztunnel process (--controller). Editing
examples/istio applies the change through the API server. make demo-k8s
runs it.`,
		Example: "  regomesh demo\n  regomesh demo --examples ./examples\n  regomesh demo --kubernetes --once",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Examples, "examples", "examples", "directory with the example bundle/ and inputs/")
	cmd.Flags().BoolVar(&cfg.Once, "once", false, "run the calls once and exit instead of staying up")
	cmd.Flags().StringVar(&cfg.WaypointBinary, "waypoint-binary", "", "cmd/waypoint binary for the waypoint pod (default: built with go from the source tree)")
	cmd.Flags().BoolVar(&cfg.Kubernetes, "kubernetes", false, "drive the mesh from a real kube-apiserver and regomesh-controller (needs make kube's bin/kube-apiserver and etcd)")
	cmd.Flags().StringVar(&cfg.ZtunnelBinary, "ztunnel-binary", "", "with --kubernetes: cmd/ztunnel binary for the nodes (default: built with go from the source tree)")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, cfg demoConfig) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if os.Geteuid() == 0 {
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		if cfg.Kubernetes {
			return kubeDemo(ctx, out, cfg)
		}
		return meshDemo(ctx, out, cfg)
	}
	if cfg.Kubernetes {
		return fmt.Errorf("demo --kubernetes needs root (network namespaces, nftables): run `sudo make demo-k8s`")
	}
	fmt.Fprintf(out, "The mesh demo needs root (network namespaces, nftables): run `sudo make demo`.\n")
	fmt.Fprintf(out, "Meanwhile, the policy engine on the example inputs:\n\n")
	return engineDemo(ctx, out, cfg)
}

// engineDemo decides the example input documents with the engine alone.
func engineDemo(ctx context.Context, out io.Writer, cfg demoConfig) error {
	dir, err := demoDir()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "decisions.jsonl")
	logFile, err := createNew(logPath)
	if err != nil {
		return fmt.Errorf("demo: decision log: %w", err)
	}
	defer logFile.Close()
	engine, decisionLog, err := demoEngine(logFile)
	if err != nil {
		return err
	}
	bundleDir := filepath.Join(cfg.Examples, "bundle")
	b, err := policy.ReadBundle(bundleDir, nil)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := engine.Load(ctx, b); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(out, "regomesh demo: the policy engine deciding the example inputs\n\n")
	fmt.Fprintf(out, "bundle %s (revision %s) + the mesh.authz library; inputs from %s\n\n",
		bundleDir, b.Revision, filepath.Join(cfg.Examples, "inputs"))
	if err := decideInputs(ctx, out, engine, filepath.Join(cfg.Examples, "inputs")); err != nil {
		return err
	}
	if err := decisionLog.Close(); err != nil {
		return fmt.Errorf("demo: decision log: %w", err)
	}
	fmt.Fprintf(out, "\nWhere to look:\n")
	fmt.Fprintf(out, "  decision log (OPA's decision-log shape): %s\n", logPath)
	fmt.Fprintf(out, "  why a request was denied:                regomesh policy explain --bundle %s -i %s\n",
		bundleDir, filepath.Join(cfg.Examples, "inputs", "checkout-admin-denied.json"))
	fmt.Fprintf(out, "  the same decision with the stock OPA CLI: bin/opa eval -f pretty -d rego -d %s -i %s data.mesh.authz.decision\n",
		bundleDir, filepath.Join(cfg.Examples, "inputs", "checkout-admin-denied.json"))
	fmt.Fprintf(out, "  the Rego tests:                          regomesh policy test -v %s %s\n", bundleDir, filepath.Join(cfg.Examples, "tests"))
	fmt.Fprintf(out, "  engine speed against plain OPA:          make bench BENCH=Decide\n")
	return nil
}

// demoDir makes a fresh directory for what a demo run writes: the demo
// runs as root, and a fixed path under /tmp could be a symlink another
// user planted. It is readable by all, so the user who ran sudo can read
// the logs it names.
func demoDir() (string, error) {
	dir, err := os.MkdirTemp("", "regomesh-demo-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	return dir, nil
}

// createNew creates a file that must not exist yet, so no planted file or
// symlink is followed.
func createNew(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

func demoEngine(logOut io.Writer) (*policy.Engine, *policy.DecisionLogger, error) {
	metrics := policy.NewMetrics(prometheus.NewRegistry())
	decisionLog, err := policy.NewDecisionLogger(logOut, policy.DecisionLogConfig{}, metrics)
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	engine, err := policy.NewEngine(policy.Config{Metrics: metrics, DecisionLog: decisionLog, Logger: quiet})
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	return engine, decisionLog, nil
}

// decideInputs prints one row per input file.
func decideInputs(ctx context.Context, out io.Writer, engine *policy.Engine, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("demo: no input documents in %s", dir)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INPUT\tLAYER\tFROM\tTO\tDECISION\tPOLICY/RULE\tREASON")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		in, err := policy.DecodeInput(raw)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", f, err)
		}
		d, err := engine.Decide(ctx, in)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", f, err)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", strings.TrimSuffix(filepath.Base(f), ".json"),
			in.Layer, source(in), target(in), verdictWord(d.Allow), policyRule(d), d.Reason)
	}
	return tw.Flush()
}

func source(in policy.Input) string {
	if in.Source.Principal == "" {
		return "plaintext " + in.Source.IP
	}
	return strings.TrimPrefix(in.Source.Principal, "spiffe://")
}

func target(in policy.Input) string {
	t := fmt.Sprintf("%s/%s:%d", in.Destination.Namespace, in.Destination.Workload, in.Destination.Port)
	if in.Request != nil {
		t += " " + in.Request.Method + " " + in.Request.Path
	}
	return t
}

func policyRule(d policy.Decision) string {
	if d.Policy == "" {
		return "-"
	}
	return d.Policy + " " + d.Rule
}
