package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEngineDemoWritesAFreshDirectory: the demo runs as root; a file or
// symlink planted at the old fixed /tmp path is left alone, and each run
// writes into a directory of its own.
func TestEngineDemoWritesAFreshDirectory(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(tmp, "regomesh-demo-decisions.jsonl")); err != nil {
		t.Fatal(err)
	}
	logs := map[string]bool{}
	for range 2 {
		var out bytes.Buffer
		if err := engineDemo(context.Background(), &out, demoConfig{Examples: filepath.Join("..", "examples")}); err != nil {
			t.Fatalf("engineDemo: %v\n%s", err, out.String())
		}
		m := regexp.MustCompile(`decision log \(OPA's decision-log shape\): (\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no decision log path in:\n%s", out.String())
		}
		if !strings.HasPrefix(m[1], filepath.Join(tmp, "regomesh-demo-")) {
			t.Errorf("decision log %s is not in a fresh directory under %s", m[1], tmp)
		}
		if info, err := os.Stat(m[1]); err != nil || info.Size() == 0 {
			t.Errorf("decision log %s: %v", m[1], err)
		}
		logs[m[1]] = true
	}
	if len(logs) != 2 {
		t.Errorf("two runs wrote the same log: %v", logs)
	}
	if got, _ := os.ReadFile(victim); string(got) != "precious\n" {
		t.Errorf("the demo wrote through the planted symlink: victim holds %q", got)
	}
}
