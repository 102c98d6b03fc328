package policy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Contribution points, in the order of rego/mesh/authz/authz.rego.
const (
	pointCustomDeny = iota
	pointDeny
	pointAllow
	pointAllowScope
	pointAudit
	numPoints
)

var pointNames = [numPoints]string{"custom_deny", "deny", "allow", "allow_scope", "audit"}

// policiesRef is where contributing packages live: data.mesh.policies.<owner>.<name>.
var policiesRef = ast.MustParseRef("data.mesh.policies")

// entry is one contributed set element, with what the library reads of it
// precomputed, so a decision renders it without allocating.
type entry struct {
	value    ast.Value
	enforced bool // every entry but dry-run ones
	dryRun   bool // "dry_run": true
	// policy, rule and reason are its fields as a decision shows them
	// ("" when absent; hasReason tells an absent reason from an empty one);
	// name is what the library's name(entry) gives for an allow_scope entry.
	policy, rule, reason, name string
	hasReason                  bool
	// rank orders allow_scope entries by name within one program (see
	// rankScopes), so a verdict sorts integers, not strings.
	rank int32
}

func newEntry(v ast.Value) *entry {
	e := &entry{value: v}
	if obj, ok := v.(ast.Object); ok {
		if dr := obj.Get(ast.StringTerm("dry_run")); dr != nil {
			e.dryRun = dr.Value.Compare(ast.Boolean(true)) == 0
		}
	}
	e.enforced = !e.dryRun
	e.policy = text(entryField(v, "policy", ast.String("")))
	e.rule = text(entryField(v, "rule", ast.String("")))
	if r := entryField(v, "reason", nil); r != nil {
		e.reason, e.hasReason = text(r), true
	}
	e.name = scopeName(v)
	return e
}

// nativeRule is a contribution rule lowered to Go: when cond holds, the
// rule contributes entry. The rest serves explanations.
type nativeRule struct {
	entry *entry
	cond  allOf
	// keys are the conditions of cond the rule could be filed under in
	// a rule index (keyCandidates).
	keys  []keyCandidate
	steps []step
	pkg   string // data.mesh.policies.<owner>.<name>
	point int
	loc   srcLoc // the rule's
}

// program is the native form of a bundle set's decision: the contribution
// rules of every package the lowering covers, indexed per point, and a
// topdown query for the packages it does not. It answers exactly what
// data.mesh.authz.decision answers (the differential tests hold it to that).
type program struct {
	points   [numPoints]*ruleIndex
	keys     []programKey   // the points' keyed fields, looked up once for all
	fallback *fallbackQuery // nil when every package is native
	fields   []*field       // every input field the native rules read
	notes    []string       // why packages fell back to topdown
	reasons  *reasonMemo
}

// errNoProgram: the bundle set defines contributions in a shape only
// topdown can evaluate (documents above a package, base data sets).
var errNoProgram = errors.New("bundle set needs topdown for every decision")

// compileProgram lowers the activated bundle set.
func compileProgram(ctx context.Context, act *activation) (*program, error) {
	p, _, err := compileProgramWith(ctx, act, nil)
	return p, err
}

// loweredPackage is one policy package in Go: its contribution rules per
// point and the input fields they read. Immutable once built (assemble
// copies what it ranks), so the programs of several generations share it.
type loweredPackage struct {
	path   ast.Ref
	rules  [numPoints][]nativeRule
	fields []*field
	// nondeterministic: a module of the package calls a builtin such as
	// time.now_ns, so decisions must not be cached.
	nondeterministic bool
}

// compileProgramWith lowers the activated set, interning fields in table
// (nil: a table of its own), and returns the packages it lowered, by
// path, beside the program.
func compileProgramWith(ctx context.Context, act *activation, table *fieldTable) (*program, map[string]*loweredPackage, error) {
	pkgs, err := contributingPackages(act)
	if err != nil {
		return nil, nil, err
	}
	l := newLowerer(act.compiler, act.data, table)
	native := make([]*loweredPackage, 0, len(pkgs))
	byPath := make(map[string]*loweredPackage, len(pkgs))
	var fallback []ast.Ref
	var notes []string
	for _, pkg := range pkgs {
		lp, err := lowerWhole(l, pkg)
		if errors.Is(err, errUnsupported) {
			fallback = append(fallback, pkg.path)
			notes = append(notes, fmt.Sprintf("%s: %v", pkg.path, err))
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		native = append(native, lp)
		byPath[pkg.path.String()] = lp
	}
	p := assemble(native)
	p.notes = notes
	if len(fallback) > 0 {
		if p.fallback, err = prepareFallback(ctx, act, fallback); err != nil {
			return nil, nil, err
		}
	}
	return p, byPath, nil
}

// lowerWhole lowers one package, with the fields it reads.
func lowerWhole(l *lowerer, pkg *contributingPackage) (*loweredPackage, error) {
	rules, err := lowerPackage(l, pkg)
	used := l.takeUsed()
	if err != nil {
		return nil, err
	}
	return &loweredPackage{path: unlocated(ast.NewTerm(pkg.path)).Value.(ast.Ref), rules: rules, fields: used}, nil
}

// unlocated is a copy of t without source locations: what a lowered
// package keeps of the syntax tree, so it keeps none of the tree's
// locations, or the module source they point into.
func unlocated(t *ast.Term) *ast.Term {
	cpy := t.Copy()
	ast.WalkTerms(cpy, func(x *ast.Term) bool {
		x.Location = nil
		return false
	})
	return cpy
}

// assemble indexes the rules of natively lowered packages, in the order
// given, into a program (without fallback).
func assemble(pkgs []*loweredPackage) *program {
	p := &program{reasons: newReasonMemo()}
	var rules [numPoints][]nativeRule
	var counts [numPoints]int
	for _, lp := range pkgs {
		for pt := range counts {
			counts[pt] += len(lp.rules[pt])
		}
	}
	for pt, n := range counts {
		rules[pt] = make([]nativeRule, 0, n)
	}
	fields := map[string]*field{}
	for _, lp := range pkgs {
		for pt := range rules {
			for _, r := range lp.rules[pt] {
				e := *r.entry
				r.entry = &e // ranked per program
				rules[pt] = append(rules[pt], r)
			}
		}
		for _, f := range lp.fields {
			fields[f.path] = f
		}
	}
	rankScopes(rules[pointAllowScope])
	for pt := range rules {
		p.points[pt] = buildIndex(rules[pt], pt)
	}
	p.keys = programKeys(p.points)
	p.fields = slices.SortedFunc(maps.Values(fields), func(a, b *field) int { return strings.Compare(a.path, b.path) })
	return p
}

// rankScopes numbers allow_scope entries in the order of their names, from
// 1, equal names alike.
func rankScopes(rules []nativeRule) {
	names := make([]string, 0, len(rules))
	for _, r := range rules {
		names = append(names, r.entry.name)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, r := range rules {
		i, _ := slices.BinarySearch(names, r.entry.name)
		r.entry.rank = int32(i + 1)
	}
}

// contributingPackage is data.mesh.policies.<owner>.<name> with its rules.
type contributingPackage struct {
	path  ast.Ref
	rules []*ast.Rule
}

// contributingPackages groups the rules that can reach the library's
// contribution sets, or refuses the bundle set when documents could reach
// them in a way only topdown follows.
func contributingPackages(act *activation) ([]*contributingPackage, error) {
	if err := checkBaseData(act.data); err != nil {
		return nil, err
	}
	return packagesOf(act.compiler), nil
}

// packagesOf groups the compiled rules of policy packages by package, in
// the order of their paths.
func packagesOf(c *ast.Compiler) []*contributingPackage {
	byPath := map[string]*contributingPackage{}
	var order []string
	for _, m := range c.Modules {
		for _, r := range m.Rules {
			if len(m.Package.Path) != len(policiesRef)+2 || !m.Package.Path.HasPrefix(policiesRef) {
				continue
			}
			key := m.Package.Path.String()
			if byPath[key] == nil {
				byPath[key] = &contributingPackage{path: m.Package.Path}
				order = append(order, key)
			}
			byPath[key].rules = append(byPath[key].rules, r)
		}
	}
	slices.Sort(order)
	out := make([]*contributingPackage, 0, len(order))
	for _, k := range order {
		out = append(out, byPath[k])
	}
	return out
}

// checkRulePlace refuses rules the library would silently ignore or
// misread: rules at or above data.mesh.policies.<owner>, and contribution
// rules (or packages named after a point) below a policy package.
func checkRulePlace(pkg ast.Ref, r *ast.Rule) error {
	depth := len(policiesRef) + 2
	full := pkg.Extend(r.Ref().GroundPrefix())
	where := fmt.Sprintf("%s:%d: %s", r.Location.File, r.Location.Row, full)
	switch {
	case policiesRef.HasPrefix(full) || full.HasPrefix(policiesRef) && len(pkg) < depth:
		return fmt.Errorf("%s: rules may not define documents at or above data.mesh.policies.<owner>; put them in a package mesh.policies.<owner>.<name>", where)
	case len(pkg) > depth && pkg.HasPrefix(policiesRef) && (isPoint(pkg[depth].Value) || isPoint(r.Head.Ref()[0].Value)):
		return fmt.Errorf("%s: the library reads contributions only from packages exactly two levels below mesh.policies (mesh.policies.<owner>.<name>); this one would be ignored", where)
	}
	return nil
}

// checkPlacement applies checkRulePlace to every rule of the bundle set.
func checkPlacement(c *ast.Compiler) error {
	for _, m := range c.Modules {
		for _, r := range m.Rules {
			if err := checkRulePlace(m.Package.Path, r); err != nil {
				return fmt.Errorf("%w: %w", ErrBundle, err)
			}
		}
	}
	return nil
}

func isPoint(v ast.Value) bool {
	switch s := v.(type) {
	case ast.String:
		return slices.Contains(pointNames[:], string(s))
	case ast.Var:
		return slices.Contains(pointNames[:], string(s))
	}
	return false
}

// checkBaseData refuses base documents (bundle data) placed where the
// library reads contributions.
func checkBaseData(data map[string]any) error {
	mesh, _ := data["mesh"].(map[string]any)
	owners, _ := mesh["policies"].(map[string]any)
	for owner, doc := range owners {
		names, _ := doc.(map[string]any)
		for name, pkg := range names {
			pkgDoc, _ := pkg.(map[string]any)
			for _, point := range pointNames {
				if _, ok := pkgDoc[point]; ok {
					return fmt.Errorf("%w: data.mesh.policies.%s.%s.%s is a base document", errNoProgram, owner, name, point)
				}
			}
		}
	}
	return nil
}

// lowerPackage lowers a package's contribution rules, or fails with
// errUnsupported for the whole package.
func lowerPackage(l *lowerer, pkg *contributingPackage) ([numPoints][]nativeRule, error) {
	var out [numPoints][]nativeRule
	if err := checkCompleteValues(pkg); err != nil {
		return out, err
	}
	for _, r := range pkg.rules {
		name, ok := r.Head.Ref()[0].Value.(ast.Var)
		pt := slices.Index(pointNames[:], string(name))
		if !ok || pt < 0 {
			continue // a helper, inlined where used
		}
		rule, err := lowerContribution(l, pkg, r)
		if err != nil {
			return out, err
		}
		if rule != nil {
			rule.point = pt
			out[pt] = append(out[pt], *rule)
		}
	}
	return out, nil
}

// lowerContribution lowers `point contains {...} if ...`, or a boolean
// `point if ...`, which contributes {"policy": "<owner>/<name>", "rule": point}
// as the library's package_entries does.
// checkCompleteValues refuses boolean points (`deny if ...`) whose
// definitions give different values: topdown reports a conflict when two
// such bodies hold at once, which matchers cannot see.
func checkCompleteValues(pkg *contributingPackage) error {
	values := map[string]ast.Value{}
	for _, r := range pkg.rules {
		if r.Head.RuleKind() != ast.SingleValue || r.Default || r.Head.Value == nil || !isPoint(r.Head.Ref()[0].Value) {
			continue
		}
		name := r.Head.Ref()[0].String()
		if have, ok := values[name]; ok && have.Compare(r.Head.Value.Value) != 0 {
			e := &ast.Expr{Location: r.Location, Terms: ast.NewTerm(r.Head.Ref())}
			return unsupported(e, "definitions with different values can conflict")
		}
		values[name] = r.Head.Value.Value
	}
	return nil
}

func lowerContribution(l *lowerer, pkg *contributingPackage, r *ast.Rule) (*nativeRule, error) {
	e := &ast.Expr{Location: r.Location, Terms: ast.NewTerm(r.Head.Ref())}
	if len(r.Head.Ref()) != 1 || r.Else != nil || len(r.Head.Args) > 0 {
		return nil, unsupported(e, "contribution point with a nested head, else or arguments")
	}
	value, err := contributedValue(e, pkg, r)
	if err != nil || value == nil {
		return nil, err
	}
	cond, steps, err := l.bodySteps(r.Body)
	if err != nil {
		return nil, err
	}
	return &nativeRule{entry: newEntry(unlocated(ast.NewTerm(value)).Value), cond: cond, keys: keyCandidates(cond), steps: steps, pkg: pkg.path.String(), loc: locOf(r.Location)}, nil
}

// contributedValue is the entry a rule contributes when its body holds;
// nil for a rule that contributes nothing (a default false).
func contributedValue(e *ast.Expr, pkg *contributingPackage, r *ast.Rule) (ast.Value, error) {
	if r.Head.RuleKind() == ast.MultiValue {
		if r.Head.Key == nil || !r.Head.Key.IsGround() {
			return nil, unsupported(e, "contributed value is computed")
		}
		return r.Head.Key.Value, checkEntry(e, r.Head.Key.Value)
	}
	v := r.Head.Value
	switch {
	case v == nil || !v.IsGround():
		return nil, unsupported(e, "computed value")
	case v.Value.Compare(ast.Boolean(false)) == 0:
		return nil, nil
	case r.Default:
		return nil, unsupported(e, "default value other than false")
	}
	if _, ok := v.Value.(ast.Boolean); !ok {
		return nil, unsupported(e, "a contribution point is a set or a boolean")
	}
	owner, name := pkg.path[len(policiesRef)].Value, pkg.path[len(policiesRef)+1].Value
	o, _ := owner.(ast.String)
	n, _ := name.(ast.String)
	return ast.NewObject(
		[2]*ast.Term{ast.StringTerm("policy"), ast.StringTerm(string(o) + "/" + string(n))},
		[2]*ast.Term{ast.StringTerm("rule"), ast.StringTerm(r.Head.Name.String())},
	), nil
}

// checkEntry keeps the native program to well-formed entries: objects with
// a string "policy".
func checkEntry(e *ast.Expr, v ast.Value) error {
	obj, ok := v.(ast.Object)
	if !ok {
		return unsupported(e, "contributed value is not an object")
	}
	if p := obj.Get(ast.StringTerm("policy")); p == nil || !isString(p.Value) {
		return unsupported(e, "contributed object needs a string \"policy\"")
	}
	return nil
}

func isString(v ast.Value) bool { _, ok := v.(ast.String); return ok }
