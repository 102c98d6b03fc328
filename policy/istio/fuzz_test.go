package istio_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/regomesh/regomesh/policy/istio"
)

// FuzzTranslate feeds arbitrary bytes to Decode and Translate: the result
// is a decode or validation error, or a bundle that compiles strictly with
// the library. Never a panic.
func FuzzTranslate(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		policies, _, err := istio.Decode(bytes.NewReader(data), "fuzz.yaml")
		if err != nil && !errors.Is(err, istio.ErrDecode) {
			t.Fatalf("decode error without ErrDecode: %v", err)
		}
		tr, err := istio.Translate(policies, istio.Options{Providers: testProviders})
		if err != nil {
			if !errors.Is(err, istio.ErrInvalid) {
				t.Fatalf("translate error without ErrInvalid: %v", err)
			}
			return
		}
		if err := compileStrict(tr); err != nil {
			t.Fatalf("translation does not compile: %v\n%s", err, renderTranslation(tr))
		}
	})
}

// fuzzSeeds are the golden inputs and every case's policies.
func fuzzSeeds(f *testing.F) []string {
	seeds := []string{"", "---\n", "kind: [", policyDoc("p", "rules: [{}]")}
	goldens, _ := filepath.Glob("testdata/golden/*.golden")
	for _, file := range goldens {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		input, _, _ := strings.Cut(string(src), "\n"+goldenSeparator+"\n")
		seeds = append(seeds, input)
	}
	files, _ := filepath.Glob("testdata/cases/*.yaml")
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var cases []struct {
			Policies string `json:"policies"`
		}
		if err := yaml.Unmarshal(src, &cases); err != nil {
			f.Fatal(err)
		}
		for _, c := range cases {
			seeds = append(seeds, c.Policies)
		}
	}
	return seeds
}
