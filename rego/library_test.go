package rego_test

import (
	"context"
	"io/fs"
	"path"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/regomesh/regomesh/rego"
)

// minRegoTests is how many Rego tests the library had when this was last
// raised: fewer means tests were deleted or stopped loading. Raise it when
// you add tests.
const minRegoTests = 49

// TestRegoTests runs every *_test.rego of the library, as `opa test rego/`
// does, with a strict compiler, and fails for each failed or erroring test.
func TestRegoTests(t *testing.T) {
	modules := parseAll(t)
	compiler := ast.NewCompiler().WithStrict(true).WithEnablePrintStatements(true)
	ch, err := tester.NewRunner().
		SetCompiler(compiler).
		SetModules(modules).
		CapturePrintOutput(true).
		RunTests(context.Background(), nil)
	if err != nil {
		t.Fatalf("compile library with its tests: %v", err)
	}
	ran := 0
	for r := range ch {
		ran++
		name := r.Package + "." + r.Name
		switch {
		case r.Error != nil:
			t.Errorf("%s (%s): error: %v", name, r.Location, r.Error)
		case r.Fail:
			t.Errorf("%s (%s): FAIL (bin/opa test -v rego/ shows the trace)\n%s", name, r.Location, r.Output)
		case r.Skip:
			t.Logf("%s: skipped", name)
		}
	}
	if ran < minRegoTests {
		t.Errorf("ran %d Rego tests, want at least %d: were tests deleted, or did a file stop loading?", ran, minRegoTests)
	}
	t.Logf("ran %d Rego tests", ran)
}

// TestLibraryCompilesStrict compiles the library alone, as the engine loads
// it, in strict mode: unused variables, imports or arguments, shadowed
// names and deprecated built-ins are errors.
func TestLibraryCompilesStrict(t *testing.T) {
	modules, err := rego.Modules()
	if err != nil {
		t.Fatal(err)
	}
	if len(modules) == 0 {
		t.Fatal("rego.Modules() returned no modules")
	}
	for name := range modules {
		if strings.HasSuffix(name, "_test.rego") {
			t.Errorf("rego.Modules() includes the test file %s", name)
		}
	}
	c := ast.NewCompiler().WithStrict(true)
	if c.Compile(modules); c.Failed() {
		t.Fatalf("library does not compile in strict mode:\n%v", c.Errors)
	}
	decision := ast.MustParseRef(rego.DecisionPath)
	if len(c.GetRulesExact(decision)) == 0 {
		t.Errorf("library defines no rule for %s", rego.DecisionPath)
	}
}

// TestLibraryStaysInItsRoot keeps every library package under rego.Root, the
// bundle root the library owns.
func TestLibraryStaysInItsRoot(t *testing.T) {
	root := ast.MustParseRef("data." + strings.ReplaceAll(rego.Root, "/", "."))
	for name, m := range parseAll(t) {
		if strings.HasSuffix(name, "_test.rego") {
			continue
		}
		if !m.Package.Path.HasPrefix(root) {
			t.Errorf("%s: package %v is outside the library root %s", name, m.Package.Path, rego.Root)
		}
	}
}

// parseAll parses every .rego file of rego.FS(), tests included.
func parseAll(t *testing.T) map[string]*ast.Module {
	t.Helper()
	modules := map[string]*ast.Module{}
	err := fs.WalkDir(rego.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(name) != ".rego" {
			return err
		}
		src, err := fs.ReadFile(rego.FS(), name)
		if err != nil {
			return err
		}
		m, err := ast.ParseModuleWithOpts(name, string(src), ast.ParserOptions{
			RegoVersion:       ast.RegoV1,
			ProcessAnnotation: true,
		})
		if err != nil {
			return err
		}
		modules[name] = m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return modules
}
