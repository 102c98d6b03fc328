package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/policy"
)

// checkResult is what `policy check -o json` prints: exactly one object.
type checkResult struct {
	Layer    policy.Layer        `json:"layer"`
	Allow    bool                `json:"allow"`
	Policy   string              `json:"policy"`
	Rule     string              `json:"rule"`
	Reason   string              `json:"reason"`
	Audit    []policy.PolicyRule `json:"audit"`
	DryRun   *policy.Verdict     `json:"dry_run,omitempty"`
	Warnings []string            `json:"warnings"`
}

// decideFlags are shared by check and explain.
type decideFlags struct {
	sources policySources
	input   inputFlags
	output  outputFormat
	now     string
}

func (f *decideFlags) register(cmd *cobra.Command) {
	f.sources.register(cmd.Flags())
	f.input.register(cmd.Flags())
	registerOutput(cmd.Flags(), &f.output)
	cmd.Flags().StringVar(&f.now, "now", "", "decide as of this time, RFC 3339 (e.g. 2026-11-25T10:00:00Z), for rules that read the clock (time.now_ns); default: the current time")
}

// context is the command's context, with the clock set by --now.
func (f *decideFlags) context(cmd *cobra.Command) (context.Context, error) {
	if f.now == "" {
		return cmd.Context(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, f.now)
	if err != nil {
		return nil, fmt.Errorf("--now %q: want an RFC 3339 time such as 2026-11-25T10:00:00Z", f.now)
	}
	return policy.WithTime(cmd.Context(), t), nil
}

func newCheckCommand() *cobra.Command {
	var f decideFlags
	cmd := &cobra.Command{
		Use:   "check (--policies PATH... | --bundle PATH...) (--input FILE|- | --from ... --to ...)",
		Short: "Decide one connection or request offline; exit 0 allowed, 2 denied, 1 error",
		Long: `check decides one input document with the given bundles, exactly as the mesh would:
layer l4 is what a ztunnel decides for a connection, l7 what a waypoint decides for
a request. Exit status: 0 allowed, 2 denied, 1 usage or input error.`,
		Example: `  regomesh policy check --policies examples/istio -i examples/inputs/frontend-to-postgres-denied.json
  regomesh policy check --bundle examples/bundle -i examples/inputs/checkout-admin-denied.json
  regomesh policy check --bundle examples/bundle --from spiffe://cluster.local/ns/shop/sa/api \
      --to shop/postgres-0 --workloads workloads.yaml --port 5432 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd, &f)
		},
	}
	f.register(cmd)
	return cmd
}

func runCheck(cmd *cobra.Command, f *decideFlags) error {
	in, err := f.input.read(cmd.InOrStdin())
	if err != nil {
		return err
	}
	ctx, err := f.context(cmd)
	if err != nil {
		return err
	}
	engine, warnings, err := f.sources.engine(cmd.Context())
	if err != nil {
		return err
	}
	d, err := engine.Decide(ctx, in)
	if err != nil {
		return err
	}
	res := checkResult{Layer: in.Layer, Allow: d.Allow, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason,
		Audit: d.Audit, DryRun: d.DryRun, Warnings: warnings}
	if res.Warnings == nil {
		res.Warnings = []string{}
	}
	if res.Audit == nil {
		res.Audit = []policy.PolicyRule{}
	}
	if err := printCheck(cmd.OutOrStdout(), f.output, res); err != nil {
		return err
	}
	if !d.Allow {
		return denied()
	}
	return nil
}

func printCheck(w io.Writer, format outputFormat, r checkResult) error {
	if format != "text" {
		return writeData(w, format, r)
	}
	fmt.Fprintf(w, "%s (%s): %s\n", verdictWord(r.Allow), r.Layer, r.Reason)
	if r.Policy != "" {
		fmt.Fprintf(w, "  decided by policy %s, rule %s\n", r.Policy, r.Rule)
	}
	for _, a := range r.Audit {
		fmt.Fprintf(w, "  audited by policy %s, rule %s\n", a.Policy, a.Rule)
	}
	if r.DryRun != nil {
		fmt.Fprintf(w, "  dry-run policies would %s: %s\n", verdictWord(r.DryRun.Allow), r.DryRun.Reason)
	}
	for _, warning := range r.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", warning)
	}
	return nil
}

func verdictWord(allow bool) string {
	if allow {
		return "ALLOW"
	}
	return "DENY"
}
