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

// decision is what check and explain decide with: the context (the clock
// set by --now), the input and the engine loaded with the policy given.
type decision struct {
	ctx      context.Context
	in       policy.Input
	engine   *policy.Engine
	warnings []string
}

// prepare reads the flags into a decision.
func (f *decideFlags) prepare(cmd *cobra.Command) (decision, error) {
	var d decision
	var err error
	if d.in, err = f.input.read(cmd.InOrStdin()); err != nil {
		return d, err
	}
	d.ctx = cmd.Context()
	if f.now != "" {
		t, err := time.Parse(time.RFC3339Nano, f.now)
		if err != nil {
			return d, fmt.Errorf("--now %q: want an RFC 3339 time such as 2026-11-25T10:00:00Z", f.now)
		}
		d.ctx = policy.WithTime(d.ctx, t)
	}
	d.engine, d.warnings, err = f.sources.engine(cmd.Context())
	return d, err
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
	p, err := f.prepare(cmd)
	if err != nil {
		return err
	}
	d, err := p.engine.Decide(p.ctx, p.in)
	if err != nil {
		return err
	}
	res := checkResult{Layer: p.in.Layer, Allow: d.Allow, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason,
		Audit: d.Audit, DryRun: d.DryRun, Warnings: p.warnings}
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
