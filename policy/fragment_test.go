package policy

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/regomesh/regomesh/policy/istio"
)

// fragmentSources are Rego modules to hold fragmentCompile to OPA with:
// every module of the translator's goldens, issue #15's DENY policies and
// variations of them, and the differential generator's packages.
func fragmentSources(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	goldens, err := filepath.Glob("istio/testdata/golden/*.golden")
	if err != nil || len(goldens) == 0 {
		t.Fatalf("goldens: %v (%d)", err, len(goldens))
	}
	for _, g := range goldens {
		src, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, section := range strings.Split(string(src), "\n=== ")[1:] {
			name, body, _ := strings.Cut(section, "\n")
			if strings.HasSuffix(name, ".rego") {
				out[filepath.Base(g)+"/"+name] = body
			}
		}
	}
	for name, src := range translatedDenies(t, 40) {
		out["translated/"+name] = src
	}
	for seed := range uint64(30) {
		r := rand.New(rand.NewPCG(seed, 15))
		for i := range 8 {
			out[fmt.Sprintf("gen/%d/%d.rego", seed, i)] = meshdataConstants.Replace(genPackage(r, "gen", i))
		}
	}
	return out
}

// translatedDenies are the modules of n fragmentDenyPolicy policies, as
// the translator writes them.
func translatedDenies(t testing.TB, n int) map[string]string {
	t.Helper()
	var policies []*istio.Policy
	for i := range n {
		policies = append(policies, fragmentDenyPolicy(i))
	}
	tr, err := istio.Translate(policies, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Modules
}

// fragmentDenyPolicy is issue #15's DENY policy i (policy/istio's load
// benchmarks), varied: some without ports, principals or CIDRs, some ALLOW.
func fragmentDenyPolicy(i int) *istio.Policy {
	src := fmt.Sprintf("src-%d", i%5)
	from := istio.Source{
		Principals:    []string{fmt.Sprintf("cluster.local/ns/%s/sa/sa-%d", src, i%7), fmt.Sprintf("cluster.local/ns/%s/sa/batch", src)},
		NotNamespaces: []string{fmt.Sprintf("trusted-%d", i%10)},
		IPBlocks:      []string{fmt.Sprintf("10.%d.0.0/16", i%250)},
	}
	if i%3 == 1 {
		from.Principals = nil
	}
	if i%4 == 2 {
		from.IPBlocks = nil
		from.Namespaces = []string{"a", "b"}
	}
	if i%5 == 3 {
		from.Principals = []string{"cluster.local/ns/x/sa/*"}
	}
	rule := istio.Rule{From: []istio.Source{from}}
	if i%2 == 0 {
		rule.To = []istio.Operation{{Ports: []string{fmt.Sprint(8000 + i), "9443"}}}
	}
	action := istio.Deny
	if i%6 == 5 {
		action = istio.Allow
	}
	return &istio.Policy{
		Namespace: fmt.Sprintf("ns-%d", i%3), Name: fmt.Sprintf("p-%d", i), Action: action,
		Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
		Rules:    []istio.Rule{rule},
	}
}

// TestFragmentCompileEqualsOPA: for every source module in the fragment,
// fragmentCompile's rules equal those OPA's compiler makes of the module
// alone, in every exported field and location (but a location's Tabs,
// which OPA aliases to its scanner's buffer); and the modules it refuses
// include every translated one outside the fragment, so the test sees
// both.
func TestFragmentCompileEqualsOPA(t *testing.T) {
	accepted, translated := 0, 0
	for name, src := range fragmentSources(t) {
		m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !isPolicyPackage(m.Package.Path) {
			continue
		}
		got, ok := fragmentCompile(m.Package.Path, map[string]*ast.Module{name: m})
		if !ok {
			continue
		}
		accepted++
		if strings.HasPrefix(name, "translated/") {
			translated++
		}
		c := ast.NewCompiler()
		if c.Compile(map[string]*ast.Module{name: m}); c.Failed() {
			t.Fatalf("%s is in the fragment but OPA refuses it: %v", name, c.Errors)
		}
		want := c.Modules[name].Rules
		if len(got) != len(want) {
			t.Fatalf("%s: %d rules, OPA %d", name, len(got), len(want))
		}
		for i := range want {
			if diff := deepDiffCompiled(reflect.ValueOf(got[i]), reflect.ValueOf(want[i]), "rule"); diff != "" {
				t.Fatalf("%s: rule %d: %s\ngot:  %v\nwant: %v", name, i, diff, got[i], want[i])
			}
		}
		if !closedModule(m) {
			t.Errorf("%s is in the fragment but not closed", name)
		}
	}
	if accepted < 50 || translated < 30 {
		t.Errorf("the fragment took %d modules, %d of them translated: too few to prove anything", accepted, translated)
	}
	t.Logf("%d modules in the fragment, %d translated", accepted, translated)
}

// deepDiff compares two AST values field by field: exported fields only
// (the unexported ones record how the parser or compiler got there), sets
// and objects by their sorted elements, locations without Tabs, and a
// rule's Module pointer not at all. It returns where they first differ.
func deepDiff(a, b reflect.Value, at string) string { return differ{}.diff(a, b, at) }

// deepDiffCompiled is deepDiff, but compares a rule's ref (data.…) by
// value only: OPA's compiler shares its parts among every reference to
// the rule and moves their locations to each in turn, so only the value
// is the compiler's own.
func deepDiffCompiled(a, b reflect.Value, at string) string {
	return differ{compiled: true}.diff(a, b, at)
}

type differ struct{ compiled bool }

func (d differ) diff(a, b reflect.Value, at string) string {
	if a.IsValid() != b.IsValid() {
		return at + ": one is missing"
	}
	if !a.IsValid() {
		return ""
	}
	if a.Type() != b.Type() {
		return fmt.Sprintf("%s: type %s, OPA %s", at, a.Type(), b.Type())
	}
	switch a.Kind() {
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return at + ": nil against non-nil"
			}
			return ""
		}
		if s, ok := a.Interface().(ast.Set); ok {
			return d.diff(reflect.ValueOf(s.Sorted()), reflect.ValueOf(b.Interface().(ast.Set).Sorted()), at+"(set)")
		}
		if o, ok := a.Interface().(ast.Object); ok {
			ob := b.Interface().(ast.Object)
			if o.Len() != ob.Len() {
				return at + ": object sizes differ"
			}
			for _, k := range o.Keys() {
				if ob.Get(k) == nil {
					return at + ": key " + k.String() + " missing"
				}
				if dd := d.diff(reflect.ValueOf(o.Get(k)), reflect.ValueOf(ob.Get(k)), at+"["+k.String()+"]"); dd != "" {
					return dd
				}
			}
			return ""
		}
		return d.diff(a.Elem(), b.Elem(), at)
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return at + ": nil against non-nil"
			}
			return ""
		}
		return d.diff(a.Elem(), b.Elem(), at)
	case reflect.Slice:
		if ref, ok := a.Interface().(ast.Ref); ok && d.compiled && ref.HasPrefix(ast.DefaultRootRef) {
			if !ref.Equal(b.Interface().(ast.Ref)) {
				return fmt.Sprintf("%s: %v, OPA %v", at, ref, b.Interface())
			}
			return ""
		}
		if a.IsNil() != b.IsNil() {
			return fmt.Sprintf("%s: nil slice against empty (%v, OPA %v)", at, a.IsNil(), b.IsNil())
		}
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: length %d, OPA %d", at, a.Len(), b.Len())
		}
		for i := range a.Len() {
			if dd := d.diff(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", at, i)); dd != "" {
				return dd
			}
		}
		return ""
	case reflect.Struct:
		if a.Type() == reflect.TypeFor[ast.Location]() {
			la, lb := a.Interface().(ast.Location), b.Interface().(ast.Location)
			la.Tabs, lb.Tabs = nil, nil
			if !reflect.DeepEqual(la, lb) {
				return fmt.Sprintf("%s: location %+v (%q), OPA %+v (%q)", at, la, la.Text, lb, lb.Text)
			}
			return ""
		}
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if !f.IsExported() || a.Type() == reflect.TypeFor[ast.Rule]() && f.Name == "Module" {
				continue
			}
			if dd := d.diff(a.Field(i), b.Field(i), at+"."+f.Name); dd != "" {
				return dd
			}
		}
		return ""
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return fmt.Sprintf("%s: %v, OPA %v", at, a.Interface(), b.Interface())
	}
	return ""
}

// TestFragmentLowersAsCompiled: a package in the fragment lowers, through
// fragmentCompile, to what it lowers to compiled by OPA beside others (as
// compileBatch compiles it, its locals numbered across the batch): the
// same conditions, entries and explanation steps.
func TestFragmentLowersAsCompiled(t *testing.T) {
	sources := fragmentSources(t)
	var pkgs []*setPackage
	for _, name := range slices.Sorted(maps.Keys(sources)) {
		m, err := ast.ParseModuleWithOpts(name, sources[name], ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			t.Fatal(err)
		}
		if !isPolicyPackage(m.Package.Path) || slices.ContainsFunc(pkgs, func(sp *setPackage) bool { return sp.path.Equal(m.Package.Path) }) {
			continue
		}
		pkgs = append(pkgs, &setPackage{path: m.Package.Path, modules: map[string]*ast.Module{name: m}})
	}
	c := newPackageCache(nil)
	var batch []int
	fragment := map[int]*loweredPackage{}
	for i, sp := range pkgs {
		if lp := c.lowerFragment(sp); lp != nil {
			fragment[i] = lp
			batch = append(batch, i)
		}
	}
	if len(batch) < 50 {
		t.Fatalf("only %d packages lowered through the fragment", len(batch))
	}
	compiled := make([]*loweredPackage, len(pkgs))
	if !c.compileBatch(pkgs, batch, compiled) {
		t.Fatal("the fragment's packages do not compile as a batch")
	}
	checked := 0
	for _, i := range batch {
		if !fragment[i].path.Equal(compiled[i].path) {
			t.Fatalf("%s: lowered as %s", pkgs[i].path, fragment[i].path)
		}
		f, c := *fragment[i], *compiled[i]
		// The compiler moves the locations of a package's path around, and
		// the fields are a set, in no order.
		f.path, c.path = nil, nil
		for _, fields := range [][]*field{f.fields, c.fields} {
			slices.SortFunc(fields, func(a, b *field) int { return strings.Compare(a.path, b.path) })
		}
		if got, want := renderLowered(&f), renderLowered(&c); got != want {
			t.Errorf("%s lowers differently through the fragment:\n%s\ncompiled:\n%s", pkgs[i].path, got, want)
		}
		// Lowered from fastCheck's trees (a dropped tree parsed again:
		// loweringTrees), a package fastParse reads is what it is from
		// fastParse's.
		if got, want := lowerParsed(t, pkgs[i], sources, fastCheck), lowerParsed(t, pkgs[i], sources, fastParse); got != want {
			t.Errorf("%s lowers differently from fastCheck's trees:\n%s\nfrom fastParse's:\n%s", pkgs[i].path, got, want)
		}
		checked++
	}
	if checked < 50 {
		t.Fatalf("only %d packages lowered from fastCheck's trees", checked)
	}
}

// lowerParsed renders sp lowered from its modules' sources as parse reads
// them; "" when parse refuses one.
func lowerParsed(t *testing.T, sp *setPackage, sources map[string]string, parse func(string, []byte) (*ast.Module, bool)) string {
	t.Helper()
	trees := map[string]*ast.Module{}
	for name := range sp.modules {
		m, ok := parse(name, []byte(sources[name]))
		if !ok {
			return ""
		}
		trees[name] = m
	}
	lp := newPackageCache(nil).lowerFragment(&setPackage{path: sp.path, modules: trees})
	if lp == nil {
		t.Fatalf("%s: not lowered from the trees read again", sp.path)
	}
	l := *lp
	l.path = nil
	slices.SortFunc(l.fields, func(a, b *field) int { return strings.Compare(a.path, b.path) })
	return renderLowered(&l)
}

// renderLowered writes out everything a lowered package holds: fields by
// path, AST values, regular expressions and prefixes by their text, maps
// in key order, every other struct field by field; so two packages that
// render alike decide and explain alike.
func renderLowered(lp *loweredPackage) string {
	var b strings.Builder
	renderValue(&b, reflect.ValueOf(lp).Elem())
	return b.String()
}

func renderValue(b *strings.Builder, v reflect.Value) {
	switch {
	case v.CanAddr() && !v.CanInterface():
		v = reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem()
	case !v.CanAddr() && v.CanInterface():
		cpy := reflect.New(v.Type()).Elem()
		cpy.Set(v)
		v = cpy
	}
	if v.CanInterface() {
		switch x := v.Interface().(type) {
		case *field:
			fmt.Fprintf(b, "field(%s)", x.path)
			return
		case ast.Value:
			b.WriteString(x.String())
			return
		case *regexp.Regexp:
			fmt.Fprintf(b, "regexp(%s)", x)
			return
		case netip.Prefix:
			b.WriteString(x.String())
			return
		}
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			b.WriteString("nil")
			return
		}
		renderValue(b, v.Elem())
	case reflect.Struct:
		b.WriteString(v.Type().Name() + "{")
		for i := range v.NumField() {
			b.WriteString(v.Type().Field(i).Name + ":")
			renderValue(b, v.Field(i))
			b.WriteString(" ")
		}
		b.WriteString("}")
	case reflect.Slice, reflect.Array:
		b.WriteString("[")
		for i := range v.Len() {
			renderValue(b, v.Index(i))
			b.WriteString(" ")
		}
		b.WriteString("]")
	case reflect.Map:
		var keys []string
		for _, k := range v.MapKeys() {
			var kb, vb strings.Builder
			renderValue(&kb, k)
			renderValue(&vb, v.MapIndex(k))
			keys = append(keys, kb.String()+"="+vb.String())
		}
		slices.Sort(keys)
		fmt.Fprintf(b, "map%v", keys)
	default:
		fmt.Fprintf(b, "%v", v)
	}
}

// TestFastParseEqualsOPA: every source module fastParse reads, it reads
// as OPA's parser does (deepDiff: every exported field and location, the
// comments included); and it reads every translated one.
func TestFastParseEqualsOPA(t *testing.T) {
	accepted, translated := 0, 0
	for name, src := range fragmentSources(t) {
		got, ok := fastParse(name, []byte(src))
		if strings.HasPrefix(name, "translated/") && !ok {
			t.Errorf("fastParse refuses translated module %s:\n%s", name, src)
		}
		if !ok {
			continue
		}
		accepted++
		if strings.HasPrefix(name, "translated/") {
			translated++
		}
		checkFastParse(t, name, []byte(src), got)
	}
	t.Logf("fastParse read %d modules, %d translated", accepted, translated)
}

// checkFastParse fails t unless m is what OPA's parser reads in src.
func checkFastParse(t testing.TB, name string, src []byte, m *ast.Module) {
	t.Helper()
	want, err := ast.ParseModuleWithOpts(name, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
	if err != nil {
		t.Fatalf("fastParse reads %s, OPA's parser refuses it: %v\n%s", name, err, src)
	}
	if d := deepDiff(reflect.ValueOf(m), reflect.ValueOf(want), "module"); d != "" {
		t.Fatalf("%s: %s\n%s", name, d, src)
	}
	if m.RegoVersion() != want.RegoVersion() {
		t.Fatalf("%s: Rego version %v, OPA %v", name, m.RegoVersion(), want.RegoVersion())
	}
	for i, r := range m.Rules {
		if r.Module != m || want.Rules[i].Module != want {
			t.Fatalf("%s: rule %d does not point to its module", name, i)
		}
	}
}

// FuzzFastParse: whatever fastParse reads, OPA's parser reads the same;
// whatever of it fragmentCompile compiles, OPA's compiler compiles the
// same. Seeded with fragmentSources:
//
//	go test ./policy -run '^$' -fuzz FuzzFastParse -fuzztime 5m
func FuzzFastParse(f *testing.F) {
	for _, src := range fragmentSources(f) {
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src string) {
		m, ok := fastParse("f.rego", []byte(src))
		light, lightOK := fastCheck("f.rego", []byte(src))
		if lightOK != ok {
			t.Fatalf("fastParse says %v, fastCheck %v\n%s", ok, lightOK, src)
		}
		if !ok {
			return
		}
		checkFastParse(t, "f.rego", []byte(src), m)
		checkLight(t, light, m)
		if !isPolicyPackage(m.Package.Path) {
			return
		}
		got, ok := fragmentCompile(m.Package.Path, map[string]*ast.Module{"f.rego": m})
		if !ok {
			return
		}
		c := ast.NewCompiler()
		if c.Compile(map[string]*ast.Module{"f.rego": m}); c.Failed() {
			t.Fatalf("in the fragment but OPA refuses it: %v\n%s", c.Errors, src)
		}
		want := c.Modules["f.rego"].Rules
		if len(got) != len(want) {
			t.Fatalf("%d rules, OPA %d", len(got), len(want))
		}
		for i := range want {
			if d := deepDiffCompiled(reflect.ValueOf(got[i]), reflect.ValueOf(want[i]), "rule"); d != "" {
				t.Fatalf("rule %d: %s\n%s", i, d, src)
			}
		}
	})
}

// checkLight holds fastCheck's tree to fastParse's: equal but for the
// terms' locations, and the package, each head and each expression
// located alike.
func checkLight(t *testing.T, light, full *ast.Module) {
	t.Helper()
	if light.Compare(full) != 0 || len(light.Comments) != len(full.Comments) {
		t.Fatalf("fastCheck's module differs from fastParse's:\n%v\n%v", light, full)
	}
	same := func(what string, a, b *ast.Location) {
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s at %+v, fastParse says %+v", what, a, b)
		}
	}
	same("package", light.Package.Location, full.Package.Location)
	for i, r := range full.Rules {
		same("rule", light.Rules[i].Location, r.Location)
		same("head", light.Rules[i].Head.Location, r.Head.Location)
		for j, e := range r.Body {
			same("expression", light.Rules[i].Body[j].Location, e.Location)
		}
	}
}

// TestFastReadEqualsOPAReader: a bundle read with fastParse taking the
// modules it reads (bundle_fastread.go) holds what OPA's reader alone
// makes of it, module by module, as a directory and as a .tar.gz; a
// module the manifest says is Rego v0 is parsed as v0; roots that do not
// permit a module refuse the bundle with the reader's message.
func TestFastReadEqualsOPAReader(t *testing.T) {
	files := map[string]string{".manifest": `{"revision": "r", "roots": ["mesh/policies/istio", "mesh/policies/hand"]}`}
	maps.Copy(files, translatedDenies(t, 20))
	// One module OPA's parser reads, one in Rego v0 by the manifest.
	files["mesh/policies/hand/a.rego"] = "package mesh.policies.hand.a\n\nallow contains {\"policy\": \"hand/a\"} if input.source.namespace == concat(\"\", [\"a\"])\n"
	files["mesh/policies/hand/v0.rego"] = "# fastParse reads it, as v1\npackage mesh.policies.hand.v0\n"
	// One fastParse reads whose tree is kept (a misspelt point is warned
	// of): every term located, not fastCheck's tree.
	files["mesh/policies/hand/kept.rego"] = "package mesh.policies.hand.kept\n\ndenys contains {\"policy\": \"hand/kept\"} if {\n\tinput.source.namespace == \"a\"\n}\n"
	files[".manifest"] = `{"revision": "r", "roots": ["mesh/policies/istio", "mesh/policies/hand"], "rego_version": 1, "file_rego_versions": {"*/v0.rego": 0}}`
	dir := writeBundle(t, t.TempDir(), files)
	for _, path := range []string{dir, tarBundleDir(t, dir)} {
		src, err := statBundleSource(path)
		if err != nil {
			t.Fatal(err)
		}
		fast, lazy, err := src.read(nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if lazy == nil {
			t.Fatal("no module read without its tree kept")
		}
		fb := &Bundle{raw: fast, lazy: lazy}
		opa, _, err := src.read(nil, true) // skipping verification takes OPA's reader alone
		if err != nil {
			t.Fatal(err)
		}
		if len(fast.Modules) != len(opa.Modules) || len(fast.Modules) != len(files)-1 {
			t.Fatalf("%s: %d modules, OPA's reader %d", path, len(fast.Modules), len(opa.Modules))
		}
		for i, mf := range fast.Modules {
			want := opa.Modules[i]
			if mf.URL != want.URL || mf.Path != want.Path || mf.RelativePath != want.RelativePath || !bytes.Equal(mf.Raw, want.Raw) {
				t.Fatalf("%s: module %d is %s (%s, %s), OPA's reader %s (%s, %s)", path, i, mf.Path, mf.URL, mf.RelativePath, want.Path, want.URL, want.RelativePath)
			}
			m, err := fb.tree(i)
			if err != nil {
				t.Fatal(err)
			}
			if d := deepDiff(reflect.ValueOf(m), reflect.ValueOf(want.Parsed), mf.Path); d != "" {
				t.Fatal(d)
			}
			if m.RegoVersion() != want.Parsed.RegoVersion() || fb.regoVersion(i) != m.RegoVersion() {
				t.Fatalf("%s: Rego version %v (kept as %v), OPA's reader %v", mf.Path, m.RegoVersion(), fb.regoVersion(i), want.Parsed.RegoVersion())
			}
			if !fb.packagePath(i).Equal(want.Parsed.Package.Path) {
				t.Fatalf("%s: package kept as %v", mf.Path, fb.packagePath(i))
			}
		}
		if v := fb.regoVersion(slices.IndexFunc(fast.Modules, func(mf bundle.ModuleFile) bool { return strings.HasSuffix(mf.Path, "v0.rego") })); v != ast.RegoV0 {
			t.Fatalf("v0.rego read as %v", v)
		}
	}

	files[".manifest"] = `{"revision": "r", "roots": ["mesh/policies/hand"]}`
	narrow := writeBundle(t, t.TempDir(), files)
	_, fastErr := ReadBundle(narrow, nil)
	src, _ := statBundleSource(narrow)
	_, _, opaErr := src.read(nil, true)
	if fastErr == nil || opaErr == nil || !strings.Contains(fastErr.Error(), "do not permit") || !strings.Contains(opaErr.Error(), "do not permit") {
		t.Fatalf("roots without mesh/policies/istio: %v; OPA's reader: %v", fastErr, opaErr)
	}
}

// BenchmarkFragment compares, on issue #15's translated DENY policies,
// fastParse with OPA's parser, and fragmentCompile plus lowering with
// OPA's compiler plus lowering (compileBatch, a batch of 256):
//
//	go test ./policy -run '^$' -bench Fragment -benchmem
func BenchmarkFragment(b *testing.B) {
	modules := translatedDenies(b, packageBatch)
	names := slices.Sorted(maps.Keys(modules))
	b.Run("parse/fastParse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, name := range names {
				if _, ok := fastParse(name, []byte(modules[name])); !ok {
					b.Fatal(name)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(names)), "ns/module")
	})
	b.Run("parse/opa", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, name := range names {
				if _, err := ast.ParseModuleWithOpts(name, modules[name], ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(names)), "ns/module")
	})
	pkgs := make([]*setPackage, len(names))
	batch := make([]int, len(names))
	for i, name := range names {
		m, _ := fastParse(name, []byte(modules[name]))
		pkgs[i], batch[i] = &setPackage{path: m.Package.Path, modules: map[string]*ast.Module{name: m}}, i
	}
	b.Run("compile+lower/fragment", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c := newPackageCache(nil)
			lowered := make([]*loweredPackage, len(pkgs))
			if rest := c.lowerFragments(pkgs, batch, lowered); len(rest) > 0 {
				b.Fatalf("%d packages outside the fragment", len(rest))
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(names)), "ns/module")
	})
	b.Run("compile+lower/opa", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c := newPackageCache(nil)
			lowered := make([]*loweredPackage, len(pkgs))
			if !c.compileBatch(pkgs, batch, lowered) {
				b.Fatal("batch failed")
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(names)), "ns/module")
	})
}
