// Command regomesh is the user's CLI for the mesh: the offline policy
// dry-run (`regomesh policy check|explain|test|replay`) and `regomesh demo`.
package main

import (
	"os"

	"github.com/regomesh/regomesh/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
