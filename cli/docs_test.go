package cli

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestNoReferenceToDesignNotes: users never see the design notes, so no
// error message, help text or document in the repository may send them
// there; the input contract is docs/policy-input.md.
func TestNoReferenceToDesignNotes(t *testing.T) {
	root := ".."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == ".git" || rel == "bin" || strings.HasPrefix(d.Name(), ".") && rel != ".ci" && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(src), "DESIGN"+".md") {
			return nil
		}
		t.Errorf("%s names the design notes, which are not in the repository: point to docs/policy-input.md (the input document) or another document in the repository", rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDocLinksResolve: every relative link in the docs and READMEs names
// a file that exists.
func TestDocLinksResolve(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)#:]+)(#[^)]*)?\)`)
	for _, doc := range []string{"../README.md", "../ARCHITECTURE.md", "../examples/README.md", "../docs/policy-input.md", "../docs/bundles.md"} {
		src, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(src), -1) {
			if _, err := os.Stat(filepath.Join(filepath.Dir(doc), m[1])); err != nil {
				t.Errorf("%s links to %s: %v", doc, m[1], err)
			}
		}
	}
	stdout, _, _ := runBinary(t, "", "policy", "check", "--help")
	if !strings.Contains(stdout, "docs/policy-input.md") {
		t.Errorf("policy check --help does not point to docs/policy-input.md:\n%s", stdout)
	}
}
