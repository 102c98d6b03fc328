package istio_test

import (
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/format"

	"github.com/regomesh/regomesh/policy/istio"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.golden with the current translation")

// A golden file is AuthorizationPolicy YAML, a line of dashes, and the
// translation: each module after a "=== <file>" line, then the warnings.
// A "# options: {json}" line in the YAML sets translation options; a
// "# topdown: <why>" line says the translation needs topdown somewhere.
const goldenSeparator = "----------------------------------------------------------------"

func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/golden/*.golden")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".golden"), func(t *testing.T) {
			runGolden(t, file)
		})
	}
}

func runGolden(t *testing.T, file string) {
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	input, want, _ := strings.Cut(string(src), "\n"+goldenSeparator+"\n")
	tr, err := translateYAML(t, filepath.Base(file), input, goldenOptions(t, input))
	if err != nil {
		t.Fatalf("translate: %v", err)
	}
	got := renderTranslation(tr)
	if *update {
		if err := os.WriteFile(file, []byte(input+"\n"+goldenSeparator+"\n"+got), 0o644); err != nil {
			t.Fatal(err)
		}
	} else if got != want {
		t.Errorf("translation differs from %s (go test -run TestGolden -update rewrites it):\n%s", file, got)
	}
	for name, mod := range tr.Modules {
		formatted, err := format.Source(name, []byte(mod))
		if err != nil || string(formatted) != mod {
			t.Errorf("%s is not as opa fmt writes it (%v):\n%s", name, err, formatted)
		}
	}
	strictCompile(t, tr)
	reportNative(t, tr, loadEngines(t, tr), strings.Contains("\n"+input, "\n# topdown:"))
}

// reportNative logs, per policy, whether the engine lowered it to its
// native program, and fails when one was left to topdown unexpectedly.
func reportNative(t *testing.T, tr *istio.Translation, e *engines, topdownExpected bool) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(tr.Modules)) {
		pkg := strings.TrimSuffix(strings.TrimPrefix(name, istio.Root+"/"), ".rego")
		ns, policy, _ := strings.Cut(pkg, "/")
		key := `["` + ns + "." + policy + `"]`
		how := "native"
		for _, detail := range e.fallback {
			if strings.Contains(detail, key) {
				how = "topdown: " + detail
			}
		}
		t.Logf("%s/%s: %s", ns, policy, how)
		if how != "native" && !topdownExpected {
			t.Errorf("%s/%s left to topdown: %s", ns, policy, how)
		}
	}
	if topdownExpected && len(e.fallback) == 0 {
		t.Errorf("the golden file says topdown, but every package is native")
	}
}

func goldenOptions(t *testing.T, input string) istio.Options {
	opts := istio.Options{Providers: testProviders}
	for _, line := range strings.Split(input, "\n") {
		if raw, ok := strings.CutPrefix(line, "# options: "); ok {
			if err := json.Unmarshal([]byte(raw), &opts); err != nil {
				t.Fatalf("options: %v", err)
			}
		}
	}
	return opts
}

func renderTranslation(tr *istio.Translation) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(tr.Modules)) {
		b.WriteString("=== " + name + "\n" + tr.Modules[name] + "\n")
	}
	b.WriteString("=== warnings\n")
	for _, w := range tr.Warnings {
		b.WriteString(w.String() + "\n")
	}
	return b.String()
}
