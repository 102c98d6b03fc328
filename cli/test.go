package cli

import (
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/spf13/cobra"

	meshrego "github.com/regomesh/regomesh/rego"
)

func newTestCommand() *cobra.Command {
	var run string
	var verbose, coverage bool
	var output outputFormat
	cmd := &cobra.Command{
		Use:   "test PATH...",
		Short: "Run Rego unit tests (test_ rules) with regomesh's library loaded; exit 2 on failure",
		Long: `test runs the test_ rules of the Rego files and bundles under PATH, as opa test
does, with regomesh's mesh.authz library loaded so tests can query
data.mesh.authz.decision. Exit status: 0 all passed, 2 a test failed or errored, 1 error.`,
		Example: `  regomesh policy test examples/bundle examples/tests
  regomesh policy test -v --run 'admin' examples/
  regomesh policy test --coverage examples/bundle examples/tests`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			return runTests(cmd, paths, run, verbose, coverage, output)
		},
	}
	cmd.Flags().StringVarP(&run, "run", "r", "", "run only tests whose package.rule name matches this regular expression")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every test, as opa test -v")
	cmd.Flags().BoolVar(&coverage, "coverage", false, "report coverage as JSON, as opa test --coverage")
	registerOutput(cmd.Flags(), &output)
	return cmd
}

func runTests(cmd *cobra.Command, paths []string, run string, verbose, coverage bool, output outputFormat) error {
	modules, store, err := tester.LoadWithRegoVersion(paths, nil, ast.RegoV1)
	if err != nil {
		return fmt.Errorf("load %s: %w", strings.Join(paths, " "), err)
	}
	if err := addLibrary(modules); err != nil {
		return err
	}
	runner := tester.NewRunner().SetStore(store).Filter(run).SetDefaultRegoVersion(ast.RegoV1)
	var cov *cover.Cover
	if coverage {
		cov = cover.New()
		runner = runner.SetCoverageQueryTracer(cov)
	}
	results, err := runner.Run(cmd.Context(), modules)
	if err != nil {
		return err
	}
	counted := make(chan *tester.Result)
	failed := 0
	go func() {
		defer close(counted)
		for r := range results {
			if r.Fail || r.Error != nil {
				failed++
			}
			counted <- r
		}
	}()
	if err := reporter(cmd, verbose, output, cov, modules).Report(counted); err != nil && failed == 0 {
		return err
	}
	if failed > 0 {
		return denied()
	}
	return nil
}

func reporter(cmd *cobra.Command, verbose bool, output outputFormat, cov *cover.Cover, modules map[string]*ast.Module) tester.Reporter {
	w := cmd.OutOrStdout()
	switch {
	case cov != nil:
		return tester.JSONCoverageReporter{Cover: cov, Modules: modules, Output: w, Verbose: verbose}
	case output == "json":
		return tester.JSONReporter{Output: w}
	}
	return tester.PrettyReporter{Output: w, Verbose: verbose, FailureLine: true}
}

// addLibrary adds regomesh's library unless the paths already hold it.
func addLibrary(modules map[string]*ast.Module) error {
	for _, m := range modules {
		if m.Package.Path.Equal(ast.MustParseRef("data.mesh.authz")) {
			return nil
		}
	}
	lib, err := meshrego.Modules()
	if err != nil {
		return err
	}
	for name, m := range lib {
		modules[name] = m
	}
	return nil
}
