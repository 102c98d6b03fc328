// Package rego holds regomesh's own Rego library, package mesh.authz: the
// decision that combines every policy package's contributions (the
// decision document in docs/policy-input.md) and the matching helpers translated and hand-written
// policies use. The .rego files are the source of truth; they are embedded
// here so the engine always evaluates the library it was built with, and
// `opa test rego/` runs their tests with the stock OPA CLI.
package rego

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

//go:embed mesh
var files embed.FS

// Root is the bundle root the library owns; user bundles may not claim it.
const Root = "mesh/authz"

// DecisionPath is the document the engine evaluates.
const DecisionPath = "data.mesh.authz.decision"

// Modules parses the library (without its tests), keyed by file name under
// "regomesh/rego/".
func Modules() (map[string]*ast.Module, error) {
	modules := map[string]*ast.Module{}
	err := fs.WalkDir(files, "mesh", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(name) != ".rego" || strings.HasSuffix(name, "_test.rego") {
			return err
		}
		src, err := files.ReadFile(name)
		if err != nil {
			return err
		}
		file := "regomesh/rego/" + name
		m, err := ast.ParseModuleWithOpts(file, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return fmt.Errorf("rego: library %s: %w", file, err)
		}
		modules[file] = m
		return nil
	})
	return modules, err
}

// FS exposes the library sources, tests included.
func FS() fs.FS { return files }
