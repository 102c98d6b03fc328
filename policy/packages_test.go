package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// A set loaded package by package (packages.go) must decide, explain and
// trace exactly as the same set compiled whole, and as topdown; a set that
// is not a partition, or a package that does not compile, goes the whole
// way, and a broken set is refused with the whole compile's error.

// partitionFiles generates a bundle of closed, native packages owned by
// gen: genPackage's packages, without those that read data or fall back
// to topdown.
func partitionFiles(t *testing.T, r *rand.Rand, n int) map[string]string {
	t.Helper()
	files := map[string]string{".manifest": `{"revision": "gen", "roots": ["mesh/policies/gen"]}`}
	for i := range n {
		src := meshdataConstants.Replace(genPackage(r, "gen", i))
		m, err := ast.ParseModuleWithOpts("p.rego", src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatal(err)
		}
		if closedModule(m) {
			files[fmt.Sprintf("mesh/policies/gen/p%d.rego", i)] = src
		}
	}
	e := loadEngine(t, Config{Logger: quietLogger()}, writeBundle(t, t.TempDir(), files))
	for _, note := range e.current.Load().prog.notes {
		name := strings.TrimPrefix(strings.Fields(note)[0], "data.mesh.policies.gen.")
		delete(files, "mesh/policies/gen/"+strings.TrimSuffix(name, ":")+".rego")
	}
	return files
}

// meshdataConstants puts the generator's base documents in place, so its
// packages need no data.
var meshdataConstants = strings.NewReplacer(
	"data.meshdata.gen.ports", "[80, 5432]", "data.meshdata.gen.namespaces", `["a", "shop"]`,
	"data.meshdata.gen.limits.max_port", "5432", "data.meshdata.gen.app", `"web"`)

func TestLoadByPackageAgrees(t *testing.T) {
	seeds := 12
	if testing.Short() || raceEnabled {
		seeds = 4
	}
	byPackage := 0
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 15))
		files := partitionFiles(t, r, 16)
		dir := writeBundle(t, t.TempDir(), files)
		e := loadEngine(t, Config{Logger: quietLogger()}, dir)
		if got, want := e.current.Load().compiled, len(files)-1; got != want {
			t.Fatalf("seed %d: the first load compiled %d packages by package, want all %d", seed, got, want)
		}
		changeOnePackage(t, dir, files)
		b, err := ReadBundle(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Load(context.Background(), b); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if e.current.Load().compiled == 1 {
			byPackage++
		}
		whole := loadWhole(t, dir)
		reference := loadEngine(t, Config{Topdown: true, CacheSize: -1, Logger: quietLogger()}, dir)
		agreeByPackage(t, seed, r, e, whole, reference)
	}
	if byPackage < seeds/2 {
		t.Errorf("%d of %d changed sets were loaded package by package", byPackage, seeds)
	}
}

// loadWhole loads dir compiled whole.
func loadWhole(t *testing.T, dir string) *Engine {
	t.Helper()
	e, err := NewEngine(Config{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	e.wholeOnly = true
	b, err := ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if e.current.Load().compiled != -1 {
		t.Fatal("loadWhole: not compiled whole")
	}
	return e
}

// changeOnePackage adds a rule to the first package of files, removes the
// second, and writes the change to dir.
func changeOnePackage(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	var names []string
	for name := range files {
		if strings.HasSuffix(name, ".rego") {
			names = append(names, name)
		}
	}
	if len(names) < 4 {
		t.Skip("the generator left fewer than 4 closed native packages")
	}
	slices.Sort(names)
	first, second := names[0], names[1]
	pkg := strings.TrimSuffix(filepath.Base(first), ".rego")
	files[first] += fmt.Sprintf("deny contains {\"policy\": \"gen/%s\", \"rule\": 99} if {\n\tinput.destination.port == 8080\n\tinput.source.namespace == \"b\"\n}\n", pkg)
	delete(files, second)
	if err := os.Remove(filepath.Join(dir, second)); err != nil {
		t.Fatal(err)
	}
	writeBundle(t, dir, map[string]string{first: files[first]})
}

// agreeByPackage compares decisions, explanations and traces of e (loaded
// package by package) with whole (compiled whole) and reference (topdown).
func agreeByPackage(t *testing.T, seed uint64, r *rand.Rand, e, whole, reference *Engine) {
	t.Helper()
	ctx := context.Background()
	for i := range 200 {
		in := genInput(r)
		want, werr := reference.Decide(ctx, in)
		got, gerr := e.Decide(ctx, in)
		if !sameError(werr, gerr) || !reflect.DeepEqual(want, got) {
			t.Fatalf("seed %d input %d: by package %+v (%v), topdown %+v (%v)", seed, i, got, gerr, want, werr)
		}
		gx, gerr := e.Explain(ctx, in)
		wx, werr := whole.Explain(ctx, in)
		if !sameError(werr, gerr) || !reflect.DeepEqual(wx, gx) {
			t.Fatalf("seed %d input %d: explanations differ\nby package: %+v\nwhole:      %+v", seed, i, gx, wx)
		}
		if i%50 == 0 && werr == nil {
			var gt, wt bytes.Buffer
			if err := e.Trace(ctx, in, &gt); err != nil {
				t.Fatalf("seed %d: trace of a set loaded package by package: %v", seed, err)
			}
			if err := whole.Trace(ctx, in, &wt); err != nil {
				t.Fatal(err)
			}
			if gt.String() != wt.String() {
				t.Fatalf("seed %d input %d: traces differ", seed, i)
			}
		}
	}
}

func TestLoadByPackageRefusesBrokenSet(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 15))
	files := partitionFiles(t, r, 12)
	dir := writeBundle(t, t.TempDir(), files)
	e := loadEngine(t, Config{Logger: quietLogger()}, dir)
	before := e.Generation()
	// Parses, but does not compile: y is unsafe.
	writeBundle(t, dir, map[string]string{"mesh/policies/gen/p0.rego": "package mesh.policies.gen.p0\n\ndeny contains {\"policy\": \"gen/p0\", \"rule\": y} if input.destination.port == 1\n"})
	b, err := ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = e.Load(context.Background(), b)
	fresh, ferr := NewEngine(Config{Logger: quietLogger()})
	if ferr != nil {
		t.Fatal(ferr)
	}
	fresh.wholeOnly = true
	want := fresh.Load(context.Background(), b)
	if err == nil || want == nil || err.Error() != want.Error() {
		t.Fatalf("loading a broken package: %v; a fresh engine says %v", err, want)
	}
	if e.Generation() != before {
		t.Fatalf("the broken set replaced the last good one")
	}
}

func TestLoadByPackageOnlyForPartitions(t *testing.T) {
	const manifest = `{"revision": "x", "roots": ["mesh/policies/gen", "meshdata"]}`
	policy := func(i int, cond string) string {
		return fmt.Sprintf("package mesh.policies.gen.p%d\n\ndeny contains {\"policy\": \"gen/p%d\", \"rule\": 0} if %s\n", i, i, cond)
	}
	tests := []struct {
		name  string
		files map[string]string
		want  int // compiled alone on reload; -1: whole
	}{
		{name: "closed packages", want: 1, files: map[string]string{}},
		{name: "a package reads another's rule", want: -1,
			files: map[string]string{"mesh/policies/gen/p9.rego": policy(9, "data.mesh.policies.gen.p1.deny")}},
		{name: "a package reads data", want: -1,
			files: map[string]string{"mesh/policies/gen/p9.rego": policy(9, "input.destination.port in data.meshdata.ports"),
				"meshdata/data.json": `{"ports": [1, 2]}`}},
		{name: "a package imports data", want: -1,
			files: map[string]string{"mesh/policies/gen/p9.rego": "package mesh.policies.gen.p9\n\nimport data.meshdata\n\ndeny contains {\"policy\": \"gen/p9\"} if meshdata.x\n"}},
		{name: "a module outside the policy packages", want: -1,
			files: map[string]string{"meshdata/helpers.rego": "package meshdata\n\nx := 1\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{".manifest": manifest}
			for i := range 6 {
				files[fmt.Sprintf("mesh/policies/gen/p%d.rego", i)] = policy(i, fmt.Sprintf("input.destination.port == %d", i))
			}
			for k, v := range tt.files {
				files[k] = v
			}
			dir := writeBundle(t, t.TempDir(), files)
			e := loadEngine(t, Config{Logger: quietLogger()}, dir)
			writeBundle(t, dir, map[string]string{"mesh/policies/gen/p0.rego": policy(0, "input.destination.port == 80")})
			b, err := ReadBundle(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Load(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			if got := e.current.Load().compiled; got != tt.want {
				t.Fatalf("compiled alone: %d, want %d", got, tt.want)
			}
			in := Input{Layer: L4, Destination: Destination{Port: 80}}
			d, err := e.Decide(context.Background(), in)
			if err != nil || d.Allow || d.Policy != "gen/p0" {
				t.Fatalf("decision after the reload: %+v %v, want a deny by gen/p0", d, err)
			}
		})
	}
}

// A panic while a set compiles, in a compile worker where nothing else
// would recover it, refuses the set: the process lives, and the policy in
// force stays.
func TestLoadRecoversPanic(t *testing.T) {
	good := writeBundle(t, t.TempDir(), map[string]string{
		"mesh/policies/t/good/p.rego": "package mesh.policies.t.good\n\ndeny contains {\"policy\": \"t/good\", \"rule\": \"nine\"} if {\n\tinput.destination.port == 9\n}\n",
	})
	bad := writeBundle(t, t.TempDir(), map[string]string{
		"mesh/policies/t/boom/p.rego": "package mesh.policies.t.boom\n\ndeny contains {\"policy\": \"t/boom\", \"rule\": \"eight\"} if {\n\tinput.destination.port == 8\n}\n",
	})
	e := loadEngine(t, Config{Logger: quietLogger()}, good)
	hook := func(path ast.Ref) {
		if strings.Contains(path.String(), "boom") {
			panic("a defect")
		}
	}
	testHookLower.Store(&hook)
	defer testHookLower.Store(nil)
	b, err := ReadBundle(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = e.Load(context.Background(), b)
	if !errors.Is(err, ErrBundle) || !strings.Contains(err.Error(), "defect in regomesh (a defect)") {
		t.Fatalf("Load of a set whose compile panics: %v", err)
	}
	if err := e.LoadShadow(context.Background(), b); !errors.Is(err, ErrBundle) {
		t.Fatalf("LoadShadow of a set whose compile panics: %v", err)
	}
	in := Input{Layer: L4, Source: Source{IP: "10.0.0.1"}, Destination: Destination{IP: "10.0.0.2", Port: 9}}
	if d, err := e.Decide(context.Background(), in); err != nil || d.Allow || d.Rule != "nine" {
		t.Errorf("after the refused set, port 9: %+v %v, want the good set's deny", d, err)
	}
}
