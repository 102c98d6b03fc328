// Command regomesh is the user's CLI for the mesh. Today it has `demo`,
// which shows the policy engine deciding the shipped example inputs.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "regomesh",
		Short:         "regomesh: a sidecar-less service mesh whose every decision is Rego",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDemoCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "regomesh:", err)
		os.Exit(1)
	}
}
