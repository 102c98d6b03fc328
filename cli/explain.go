package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/policy"
)

func newExplainCommand() *cobra.Command {
	var f decideFlags
	var full bool
	cmd := &cobra.Command{
		Use:   "explain (--policies PATH... | --bundle PATH...) (--input FILE|- | --from ... --to ...)",
		Short: "Explain a decision: every policy and rule, which matched, which condition failed",
		Long: `explain decides like check, then walks every rule of every policy package: whether
it matched and, if not, the first condition that did not hold (with file:line), and
says why the final decision follows. --full appends OPA's topdown trace.
Exit status as check: 0 allowed, 2 denied, 1 error.`,
		Example: `  regomesh policy explain --bundle examples/bundle -i examples/inputs/frontend-to-postgres-denied.json
  regomesh policy explain --bundle examples/bundle -i input.json --full`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runExplain(cmd, &f, full)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&full, "full", false, "append OPA's full topdown trace of data.mesh.authz.decision")
	return cmd
}

func runExplain(cmd *cobra.Command, f *decideFlags, full bool) error {
	p, err := f.prepare(cmd)
	if err != nil {
		return err
	}
	for _, w := range p.warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
	}
	x, err := p.engine.Explain(p.ctx, p.in)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	for i := range x.Rules {
		r := &x.Rules[i]
		r.Location = f.sources.istio.displayLocation(r.Location)
		if r.Failed != nil {
			r.Failed.Location = f.sources.istio.displayLocation(r.Failed.Location)
		}
	}
	if f.output != "text" {
		if err := writeData(w, f.output, x); err != nil {
			return err
		}
	} else {
		printExplanation(w, p.in.Layer, x)
	}
	if full {
		fmt.Fprintf(w, "\nOPA trace of data.mesh.authz.decision:\n")
		if err := p.engine.Trace(p.ctx, p.in, w); err != nil {
			return err
		}
	}
	if !x.Decision.Allow {
		return denied()
	}
	return nil
}

func printExplanation(w io.Writer, layer policy.Layer, x policy.Explanation) {
	d := x.Decision
	fmt.Fprintf(w, "%s (%s): %s\n", verdictWord(d.Allow), layer, d.Reason)
	if d.Policy != "" {
		fmt.Fprintf(w, "  decided by policy %s, rule %s\n", d.Policy, d.Rule)
	}
	fmt.Fprintf(w, "\nWhy: %s\n", why(x))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	pkg := ""
	for _, r := range x.Rules {
		if r.Package != pkg {
			pkg = r.Package
			fmt.Fprintf(tw, "\n%s\n", pkg)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.Point, ruleName(r), outcome(r))
	}
	tw.Flush()
	if len(x.Topdown) > 0 {
		fmt.Fprintf(w, "\nEvaluated by OPA's topdown (rules shown only when they contributed; --full traces them): %s\n",
			strings.Join(x.Topdown, ", "))
	}
}

func ruleName(r policy.RuleTrace) string {
	name := r.Policy
	if r.Rule != "" {
		name += " rule " + r.Rule
	}
	if r.DryRun {
		name += " (dry-run)"
	}
	return name
}

func outcome(r policy.RuleTrace) string {
	switch {
	case r.Matched && r.Topdown:
		return "MATCHED (topdown)"
	case r.Matched:
		return "MATCHED  " + r.Location
	case r.Failed == nil:
		return "no match"
	case r.Failed.Undefined:
		return fmt.Sprintf("no: %s  (%s; the input has no such field)", r.Failed.Text, r.Failed.Location)
	}
	return fmt.Sprintf("no: %s  (%s)", r.Failed.Text, r.Failed.Location)
}

// why says how the library's order turns the matches into the decision.
// It never contradicts the decision: when the matches listed do not
// account for it (an entry no rule shows), it gives the decision's reason.
func why(x policy.Explanation) string {
	matched := map[string][]string{}
	for _, r := range x.Rules {
		if r.Matched && !r.DryRun {
			matched[r.Point] = append(matched[r.Point], ruleName(r))
		}
	}
	var allow bool
	var text string
	switch {
	case len(matched["custom_deny"]) > 0:
		text = "a CUSTOM provider refused (" + strings.Join(matched["custom_deny"], "; ") + "); CUSTOM is checked first"
	case len(matched["deny"]) > 0:
		text = "a DENY rule matched (" + strings.Join(matched["deny"], "; ") + "); deny overrides allow"
	case len(matched["allow"]) > 0:
		allow, text = true, "an ALLOW rule matched ("+strings.Join(matched["allow"], "; ")+") and no DENY did"
	case len(matched["allow_scope"]) > 0:
		text = "ALLOW policies select the destination (" + strings.Join(matched["allow_scope"], "; ") + ") and none of their rules matched: default deny"
	default:
		allow, text = true, "no DENY matched and no ALLOW policy selects the destination: allowed by default"
	}
	if allow != x.Decision.Allow {
		return x.Decision.Reason + " (the rules listed do not show the entry that decided: --full traces every rule)"
	}
	return text
}
