package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/controller/xds"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// defaultAdmin is regomesh-controller's --admin-addr default.
const defaultAdmin = "127.0.0.1:15014"

func newStatusCommand() *cobra.Command {
	var admins []string
	var timeout time.Duration
	var output outputFormat
	cmd := &cobra.Command{
		Use:   "status [--admin ADDR]... [-o text|json|yaml]",
		Short: "Show what each proxy has ACKed from the controller, and what it refused",
		Long: `status asks regomesh-controller's admin endpoint (GET /debug/proxies) which
ztunnels and waypoints stream from it, and prints for each: its SPIFFE ID, kind,
node and open streams, the state version it last ACKed and when, the policy bundle
revisions it last ACKed, and the last response it refused (NACK) with its reason.

The admin endpoint listens on loopback (--admin-addr, 127.0.0.1:15014); in a cluster,
forward it first. Each controller replica reports the proxies streaming from it:
give --admin once per replica to see them all, in one table with a CONTROLLER
column (-o json and yaml then print a list, one report per replica). A replica that
cannot be read is reported, the others are still shown, and the exit status is 1.
See docs/proxy-status.md.`,
		Example: `  kubectl -n regomesh-system port-forward deploy/regomesh-controller 15014 &
  regomesh status
  regomesh status -o json
  regomesh status --admin 127.0.0.1:15014 --admin 127.0.0.1:25014   # two replicas, each forwarded`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(admins) == 1 {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				report, err := fetchStatus(ctx, admins[0])
				if err != nil {
					return err
				}
				if output != "text" {
					return writeData(cmd.OutOrStdout(), output, report)
				}
				return writeStatus(cmd.OutOrStdout(), report)
			}
			replicas, err := fetchReplicas(cmd.Context(), admins, timeout)
			if output != "text" {
				if werr := writeData(cmd.OutOrStdout(), output, replicas); werr != nil {
					return werr
				}
			} else if werr := writeReplicas(cmd.OutOrStdout(), replicas); werr != nil {
				return werr
			}
			return err
		},
	}
	cmd.Flags().StringArrayVar(&admins, "admin", []string{defaultAdmin}, "regomesh-controller's admin endpoint (its --admin-addr): host:port or an http:// URL; repeat it for each replica")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the controller's answer")
	registerOutput(cmd.Flags(), &output)
	return cmd
}

// replicaStatus is one controller replica's report, as status prints it
// for several replicas.
type replicaStatus struct {
	Admin  string            `json:"admin"`
	Report *xds.StatusReport `json:"report,omitempty"`
	Error  string            `json:"error,omitempty"`
}

// fetchReplicas reads every replica's report at once, each within
// timeout, so that one that hangs costs the others nothing; they are
// listed in the order given. The error joins the failures, each of which
// is also in its replica's entry.
func fetchReplicas(ctx context.Context, admins []string, timeout time.Duration) ([]replicaStatus, error) {
	out := make([]replicaStatus, len(admins))
	errs := make([]error, len(admins))
	var wg sync.WaitGroup
	for i, admin := range admins {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			out[i].Admin = admin
			report, err := fetchStatus(ctx, admin)
			if err != nil {
				out[i].Error, errs[i] = err.Error(), err
				return
			}
			out[i].Report = &report
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// writeReplicas prints each replica's state version and bundles, then one
// table of every replica's proxies, the replica first.
func writeReplicas(w io.Writer, replicas []replicaStatus) error {
	for _, r := range replicas {
		if r.Report == nil {
			fmt.Fprintf(w, "controller %s: not read (below)\n", r.Admin)
			continue
		}
		fmt.Fprintf(w, "controller %s: state version %s, bundles %s\n", r.Admin, r.Report.Version, formatBundles(r.Report.Bundles, nil))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTROLLER\tPROXY\tKIND\tNODE\tSTREAMS\tSTATE ACKED\tBUNDLES ACKED\tLAST NACK")
	for _, r := range replicas {
		if r.Report == nil {
			continue
		}
		for _, p := range r.Report.Proxies {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Admin, p.ID, p.Kind, cmp.Or(p.Node, "-"), p.Streams,
				ackedState(p, r.Report.Time), formatBundles(p.Bundles, r.Report.Bundles), lastNACK(p.LastNACK, r.Report.Time))
		}
	}
	return tw.Flush()
}

// fetchStatus reads the proxies' status from the admin endpoint at admin.
func fetchStatus(ctx context.Context, admin string) (xds.StatusReport, error) {
	var report xds.StatusReport
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	url := strings.TrimSuffix(base, "/") + xds.StatusPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return report, fmt.Errorf("status: --admin %s: %w", admin, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return report, fmt.Errorf("status: cannot reach regomesh-controller's admin endpoint at %s: %w "+
			"(is the controller running with --admin-addr %s? In a cluster, forward it first: "+
			"kubectl -n <namespace> port-forward deploy/regomesh-controller 15014; docs/proxy-status.md)", admin, err, admin)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return report, fmt.Errorf("status: reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return report, fmt.Errorf("status: %s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &report); err != nil {
		return report, fmt.Errorf("status: %s did not answer with the proxies' status (is it regomesh-controller's admin endpoint?): %w", url, err)
	}
	return report, nil
}

// writeStatus prints the report as a table, one proxy a row; ages are
// measured against the controller's clock.
func writeStatus(w io.Writer, r xds.StatusReport) error {
	fmt.Fprintf(w, "controller: state version %s, bundles %s\n\n", r.Version, formatBundles(r.Bundles, nil))
	if r.Waiting > 0 {
		fmt.Fprintf(w, "%d proxy streams wait for this controller's first state (it has not listed the cluster yet); they hold what they had\n\n", r.Waiting)
	}
	if len(r.Proxies) == 0 {
		_, err := fmt.Fprintln(w, "no proxy has subscribed to this controller replica since it started")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tKIND\tNODE\tSTREAMS\tSTATE ACKED\tBUNDLES ACKED\tLAST NACK")
	for _, p := range r.Proxies {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", p.ID, p.Kind, cmp.Or(p.Node, "-"), p.Streams,
			ackedState(p, r.Time), formatBundles(p.Bundles, r.Bundles), lastNACK(p.LastNACK, r.Time))
	}
	return tw.Flush()
}

// ackedState is "v<version> <age> ago", or "none" before the first ACK.
func ackedState(p xds.ProxyStatus, now time.Time) string {
	if p.AckedVersion == "" {
		return "none"
	}
	return fmt.Sprintf("v%s %s ago", p.AckedVersion, age(now.Sub(p.AckedAt)))
}

// formatBundles lists revisions by bundle name, shortened; a revision
// other than the current one (when current is given) is marked stale.
func formatBundles(revs, current map[string]string) string {
	if len(revs) == 0 {
		return "none"
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(revs)) {
		s := name + "=" + shortRevision(revs[name])
		if cur, ok := current[name]; current != nil && (!ok || cur != revs[name]) {
			s += " (stale)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

func shortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// lastNACK is "v<version> <age> ago: <reason>" on one line, or "-".
func lastNACK(n *xds.NACK, now time.Time) string {
	if n == nil {
		return "-"
	}
	what := "v" + n.Version
	if n.Type == wire.BundleTypeURL {
		what = "bundles v" + n.Version
	}
	return fmt.Sprintf("%s %s ago: %s", what, age(now.Sub(n.At)), strings.Join(strings.Fields(n.Reason), " "))
}

// age rounds d to its largest unit: 12s, 3m, 5h, 2d.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d/time.Second)))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}
