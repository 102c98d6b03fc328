package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Exit statuses, as `opa eval --fail` distinguishes them.
const (
	ExitAllowed = 0 // the decision allows, or the command succeeded
	ExitError   = 1 // usage, input or policy errors
	ExitDenied  = 2 // the decision denies, a test failed, a replay flipped
)

// exitError carries an exit status out of a command.
type exitError struct {
	code int
	err  error // nil: nothing more to print
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// denied is the quiet exit of a command whose answer was printed.
func denied() error { return &exitError{code: ExitDenied} }

// NewRoot returns the regomesh command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "regomesh",
		Short:         "regomesh: a sidecar-less service mesh whose every decision is Rego",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newPolicyCommand(), newDemoCommand(), newStatusCommand())
	return root
}

// Run executes the command line args and returns the process exit status,
// printing errors to stderr.
func Run(args []string, stdout, stderr io.Writer) int {
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitAllowed
	}
	var exit *exitError
	if errors.As(err, &exit) {
		if exit.err != nil {
			fmt.Fprintln(stderr, "regomesh:", exit.err)
		}
		return exit.code
	}
	fmt.Fprintln(stderr, "regomesh:", err)
	return ExitError
}

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Dry-run, explain, test and replay policy offline",
		Long: `policy answers "would this connection or request pass, and which rule decides?"
offline, from the same OPA bundles the mesh enforces.`,
	}
	cmd.AddCommand(newCheckCommand(), newExplainCommand(), newTranslateCommand(), newValidateCommand(),
		newTestCommand(), newReplayCommand())
	return cmd
}
