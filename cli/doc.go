// Package cli implements the regomesh command line: `regomesh policy
// check|explain|test|replay` (the offline policy dry-run, from the same
// bundles the mesh enforces) and `regomesh demo`. Commands follow the habits
// of `opa eval`/`opa test` and kubectl: -o json|yaml|text, examples in
// --help, and exit statuses a script can branch on (ExitAllowed, ExitDenied,
// ExitError).
package cli
