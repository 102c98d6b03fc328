package chartstest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGoldenRenders: the regomesh chart renders, for every value set,
// exactly testdata/golden/<set>.yaml, so a review sees what a template
// change does to what users install. -update rewrites them.
func TestGoldenRenders(t *testing.T) {
	for _, set := range valueSets {
		got := mustRender(t, "regomesh", values(t, set))
		path := filepath.Join("testdata", "golden", set+".yaml")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./charts/chartstest -run TestGoldenRenders -update writes it)", err)
		}
		if got != string(want) {
			t.Errorf("%s: the render differs from %s (-update rewrites it after a review):\n%s", set, path, firstDifference(string(want), got))
		}
	}
}

// firstDifference shows the first line where two renders part, with a
// few lines of context.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		if i < len(w) && i < len(g) && w[i] == g[i] {
			continue
		}
		from := max(0, i-3)
		line := func(l []string, j int) string {
			if j < len(l) {
				return l[j]
			}
			return "(end)"
		}
		var b strings.Builder
		for j := from; j < i; j++ {
			b.WriteString("  " + w[j] + "\n")
		}
		b.WriteString("- " + line(w, i) + "\n+ " + line(g, i) + "\n")
		return b.String()
	}
	return "(no line differs)"
}
