package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/policy/istio"
)

func newTranslateCommand() *cobra.Command {
	var f istioFlags
	var output, out string
	cmd := &cobra.Command{
		Use:   "translate PATH... [-o rego|bundle] [--out DIR|FILE.tar.gz]",
		Short: "Translate AuthorizationPolicy and PeerAuthentication YAML to Rego, with Istio's warnings on stderr",
		Long: `translate reads AuthorizationPolicies and PeerAuthentications (files or directories
of Kubernetes YAML; other kinds are skipped with a note) and prints the Rego each
becomes (-o rego,
the default), or writes an OPA bundle (-o bundle) to a directory or a .tar.gz
that ztunnel, waypoints, regomesh policy check and the stock opa CLI all load.
Where a policy is enforced otherwise than written (at L4, most often), a warning
in Istio's words goes to stderr.`,
		Example: `  regomesh policy translate examples/istio
  regomesh policy translate -o bundle --out /tmp/istio-bundle examples/istio
  regomesh policy translate -o bundle --out policies.tar.gz policies/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			res, notes, err := decodePolicies(paths)
			if err != nil {
				return err
			}
			if output == "bundle" && empty(res) {
				return noPolicies(paths, notes)
			}
			tr, err := istio.TranslateAll(res, f.options())
			if err != nil {
				return err
			}
			for _, n := range notes {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", n)
			}
			for _, w := range tr.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			if output == "bundle" {
				return writeBundle(tr, out)
			}
			for _, name := range slices.Sorted(mapKeys(tr.Modules)) {
				fmt.Fprintf(cmd.OutOrStdout(), "# %s\n%s\n", name, tr.Modules[name])
			}
			return nil
		},
	}
	f.registerOptions(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "rego", "rego (print the modules) or bundle (write --out)")
	cmd.Flags().StringVar(&out, "out", "", "with -o bundle: a directory, or a file ending in .tar.gz")
	return cmd
}

// noPolicies refuses to make a bundle of no AuthorizationPolicy (nor
// PeerAuthentication): loaded, it would replace the policies in force with
// none, allowing everything.
func noPolicies(paths, notes []string) error {
	msg := fmt.Sprintf("no AuthorizationPolicy or PeerAuthentication in %s: check the paths", strings.Join(paths, " "))
	if len(notes) > 0 {
		msg += " (skipped: " + strings.Join(notes, "; ") + ")"
	}
	return errors.New(msg + "; an OPA bundle without policies would allow all traffic (docs/bundles.md says how to make an empty bundle on purpose)")
}

func writeBundle(tr *istio.Translation, out string) error {
	if out == "" {
		return fmt.Errorf("-o bundle needs --out DIR or --out FILE.tar.gz")
	}
	if !strings.HasSuffix(out, ".tar.gz") {
		return tr.WriteBundleDir(out)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := tr.WriteBundleTarGz(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func newValidateCommand() *cobra.Command {
	var f istioFlags
	cmd := &cobra.Command{
		Use:   "validate PATH...",
		Short: "Validate AuthorizationPolicy and PeerAuthentication YAML as Istio does; exit 1 on errors",
		Long: `validate reads AuthorizationPolicies and PeerAuthentications (files or directories
of Kubernetes YAML) and reports every problem Istio's validation would, naming
the policy, the field and the file:line. Exit status: 0 valid, 1 errors.`,
		Example: `  regomesh policy validate examples/istio
  kubectl get authorizationpolicies -A -o yaml | regomesh policy validate -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			res, notes, err := decodePolicies(paths)
			if err != nil {
				return err
			}
			for _, n := range notes {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", n)
			}
			var errs []error
			for _, p := range res.AuthorizationPolicies {
				errs = append(errs, istio.Validate(p, f.options()))
			}
			for _, pa := range res.PeerAuthentications {
				errs = append(errs, istio.ValidatePeerAuthentication(pa))
			}
			var bad int
			for _, err := range errs {
				if err != nil {
					fmt.Fprintln(cmd.OutOrStdout(), err)
					bad++
				}
			}
			if bad > 0 {
				return &exitError{code: ExitError, err: fmt.Errorf("%d of %d policies are invalid", bad, len(errs))}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d policies valid\n", len(errs))
			return nil
		},
	}
	f.registerOptions(cmd.Flags())
	return cmd
}
