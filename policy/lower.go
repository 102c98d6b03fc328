package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// errUnsupported marks Rego the native program does not cover; the package
// holding it is evaluated by topdown instead (same answers, slower).
var errUnsupported = errors.New("not covered by the native program")

// lowerer turns compiled rule bodies into matchers. It covers the fragment
// translated AuthorizationPolicies and most hand-written mesh policies use:
// comparisons and set membership of input fields against constants, string
// prefix/suffix/contains, CIDR and regex tests, lower/upper, negation, and
// references to boolean helper rules (inlined; several definitions are OR).
// Everything else is refused with errUnsupported and a reason.
type lowerer struct {
	compiler ruleLookup
	data     map[string]any // base documents of the bundle set
	// fields interns input fields by path, so every rule reading a path
	// reads the same *field (the index and the cache key rely on it);
	// shared by every lowering of an engine (packageCache).
	fields *fieldTable
	// used holds the fields lowered since the last call to take.
	used     map[string]*field
	inlining map[string]bool // rule refs being inlined, against recursion
}

// fieldTable interns fields by path. Fields are immutable, so one table
// serves every program an engine builds, and lowerings running at once.
type fieldTable struct {
	mu     sync.Mutex
	byPath map[string]*field
}

func newFieldTable() *fieldTable { return &fieldTable{byPath: map[string]*field{}} }

// intern returns the table's field for f's path, adding f if none.
func (t *fieldTable) intern(f *field) *field {
	t.mu.Lock()
	defer t.mu.Unlock()
	if have, ok := t.byPath[f.path]; ok {
		return have
	}
	t.byPath[f.path] = f
	return f
}

// ruleLookup finds the compiled rules a reference names: an ast.Compiler,
// or the rules of one package compiled without one (fragment.go).
type ruleLookup interface {
	// GetRulesExact returns the rules whose ref is exactly ref.
	GetRulesExact(ref ast.Ref) []*ast.Rule
	// GetRules returns the rules whose ref ref names or lies in.
	GetRules(ref ast.Ref) []*ast.Rule
}

func newLowerer(c ruleLookup, data map[string]any, fields *fieldTable) *lowerer {
	if fields == nil {
		fields = newFieldTable()
	}
	return &lowerer{compiler: c, data: data, fields: fields, used: map[string]*field{}, inlining: map[string]bool{}}
}

// takeUsed returns the fields lowered since the last call, and forgets them.
func (l *lowerer) takeUsed() []*field {
	out := make([]*field, 0, len(l.used))
	for _, f := range l.used {
		out = append(out, f)
	}
	clear(l.used)
	return out
}

// operand is what a term of an expression resolved to.
type operand struct {
	field *field    // an input field, or
	value ast.Value // a constant, or
	undef bool      // a constant reference that is undefined
}

// scope maps a body's local variables to operands. Bindings made by
// `x = input.a` require the field to exist; unconsumed ones stay as
// `defined` conditions.
type scope struct {
	vars    map[ast.Var]operand
	pending map[ast.Var]bool
	// groups holds, per element stand-in field, the conditions on an
	// iterated variable (`x = input.a[k]`); keys are the iteration keys,
	// which the fragment does not let the body use.
	groups map[*field]*elementGroup
	keys   map[ast.Var]bool
}

func newScope() *scope {
	return &scope{vars: map[ast.Var]operand{}, pending: map[ast.Var]bool{},
		groups: map[*field]*elementGroup{}, keys: map[ast.Var]bool{}}
}

func unsupported(e *ast.Expr, why string) error {
	loc := ""
	if e.Location != nil {
		loc = fmt.Sprintf("%s:%d: ", e.Location.File, e.Location.Row)
	}
	return fmt.Errorf("%s%v: %s: %w", loc, e, why, errUnsupported)
}

// body lowers a rule body to the conjunction of its conditions.
func (l *lowerer) body(b ast.Body) (allOf, error) {
	cond, _, err := l.bodySteps(b)
	return cond, err
}

// step is one condition of a body in the order its author wrote it, with
// the source it came from: what an explanation walks.
type step struct {
	m    matcher
	text string // the author's expression
	loc  srcLoc
}

// srcLoc is a place in a module, formatted as file:row only when an
// explanation shows it: a set of 10,000 policies has about 100,000 steps,
// and their file names are the modules' own strings.
type srcLoc struct {
	file string
	row  int
}

func locOf(l *ast.Location) srcLoc {
	if l == nil {
		return srcLoc{}
	}
	return srcLoc{file: l.File, row: l.Row}
}

// String is file:row, or "" for no place.
func (l srcLoc) String() string {
	if l.file == "" && l.row == 0 {
		return ""
	}
	return l.file + ":" + strconv.Itoa(l.row)
}

// bodySteps lowers a body to the flattened conjunction the program tests,
// and to the steps an explanation walks.
func (l *lowerer) bodySteps(b ast.Body) (allOf, []step, error) {
	s := newScope()
	var out allOf
	var steps []step
	for _, e := range b {
		bound := len(s.vars)
		m, err := l.expr(e, s)
		if err != nil {
			return nil, nil, err
		}
		if m == nil && len(s.vars) > bound {
			m = l.bindingCheck(e, s)
		} else if m != nil {
			out = append(out, m)
		}
		if m != nil {
			steps = append(steps, newStep(e, m))
		}
	}
	for _, v := range slices.Sorted(maps.Keys(s.pending)) {
		out = append(out, defined{s.vars[v].field})
	}
	return flatten(out), steps, nil
}

// bindingCheck is the condition a binding imposes (`x := input.a` needs
// input.a), for explanations; nil when it bound a constant.
func (l *lowerer) bindingCheck(e *ast.Expr, s *scope) matcher {
	for _, t := range e.Operands() {
		if v, ok := t.Value.(ast.Var); ok {
			if op, bound := s.vars[v]; bound && op.field != nil {
				return defined{op.field}
			}
		}
	}
	return nil
}

func newStep(e *ast.Expr, m matcher) step {
	st := step{m: m, text: e.String(), loc: locOf(e.Location)}
	if e.Location != nil && len(e.Location.Text) > 0 {
		st.text = string(e.Location.Text)
	}
	return st
}

func (l *lowerer) expr(e *ast.Expr, s *scope) (matcher, error) {
	if len(e.With) > 0 {
		return nil, unsupported(e, "with modifiers")
	}
	var m matcher
	var err error
	switch t := e.Terms.(type) {
	case *ast.Term:
		m, err = l.term(e, t, s)
	case []*ast.Term:
		m, err = l.call(e, t, s)
	default:
		return nil, unsupported(e, "expression form")
	}
	if err != nil || m == nil {
		return m, err
	}
	if l, ok := m.(leaf); ok && s.groups[l.field()] != nil {
		g := s.groups[l.field()]
		g.tests = append(g.tests, elementTest{l: l, negated: e.Negated})
		return nil, nil // tested element by element by the group's someElement
	}
	if !e.Negated {
		return m, nil
	}
	return not{m}, nil
}

// term lowers an expression that is a single term: truthiness.
func (l *lowerer) term(e *ast.Expr, t *ast.Term, s *scope) (matcher, error) {
	if v, ok := t.Value.(ast.Var); ok {
		op, bound := s.vars[v]
		if !bound {
			return nil, unsupported(e, "unbound variable")
		}
		return l.truth(op, s, v), nil
	}
	if ref, ok := t.Value.(ast.Ref); ok && ref.HasPrefix(ast.DefaultRootRef) {
		return l.ruleTruth(e, ref)
	}
	op, err := l.operand(e, t, s)
	if err != nil {
		return nil, err
	}
	return l.truth(op, s, ""), nil
}

func (l *lowerer) truth(op operand, s *scope, v ast.Var) matcher {
	switch {
	case op.undef:
		return constant(false)
	case op.field != nil:
		delete(s.pending, v)
		return truthy{op.field}
	}
	return constant(op.value.Compare(ast.Boolean(false)) != 0)
}

// call lowers a builtin call or unification.
func (l *lowerer) call(e *ast.Expr, terms []*ast.Term, s *scope) (matcher, error) {
	name := e.Operator().String()
	args := terms[1:]
	switch name {
	case "eq":
		return l.unify(e, args, s)
	case "equal", "neq", "lt", "lte", "gt", "gte":
		return l.comparison(e, name, args, s)
	case "internal.member_2":
		return l.membership(e, args, s)
	case "startswith", "endswith", "contains":
		return l.stringBuiltin(e, name, args, s)
	case "net.cidr_contains":
		return l.cidr(e, args, s)
	case "regex.match":
		return l.regex(e, args, s)
	case "lower", "upper":
		return nil, l.transform(e, name, args, s)
	}
	return nil, unsupported(e, "builtin "+name)
}

// resolve resolves every argument; an undefined constant makes the whole
// expression fail, which the caller reports as constant(false).
func (l *lowerer) resolve(e *ast.Expr, args []*ast.Term, s *scope) ([]operand, bool, error) {
	ops := make([]operand, len(args))
	for i, a := range args {
		op, err := l.operand(e, a, s)
		if err != nil {
			return nil, false, err
		}
		if op.undef {
			return nil, true, nil
		}
		ops[i] = op
	}
	return ops, false, nil
}

func (l *lowerer) operand(e *ast.Expr, t *ast.Term, s *scope) (operand, error) {
	switch v := t.Value.(type) {
	case ast.Var:
		if s.keys[v] {
			return operand{}, unsupported(e, "iteration key "+string(v)+" used in the body")
		}
		op, ok := s.vars[v]
		if !ok {
			return operand{}, unsupported(e, "unbound variable "+string(v))
		}
		return op, nil
	case ast.Ref:
		return l.refOperand(e, v)
	}
	if !t.IsGround() {
		return operand{}, unsupported(e, "non-ground term "+t.String())
	}
	return operand{value: t.Value}, nil
}

func (l *lowerer) refOperand(e *ast.Expr, ref ast.Ref) (operand, error) {
	if ref.HasPrefix(ast.InputRootRef) {
		f, ok := fieldFor(ref)
		if !ok {
			return operand{}, unsupported(e, "input reference with variables "+ref.String())
		}
		return operand{field: l.intern(f)}, nil
	}
	if !ref.HasPrefix(ast.DefaultRootRef) || !ref.IsGround() {
		return operand{}, unsupported(e, "reference "+ref.String())
	}
	if len(l.compiler.GetRules(ref)) > 0 {
		return operand{}, unsupported(e, "value of rule "+ref.String())
	}
	doc, ok := l.baseDocument(ref)
	if !ok {
		return operand{undef: true}, nil
	}
	val, err := ast.InterfaceToValue(doc)
	if err != nil {
		return operand{}, unsupported(e, err.Error())
	}
	return operand{value: val}, nil
}

// elementOf recognises `input.a.b[k]` with k a fresh variable: iteration
// over the collection input.a.b. It returns a new group for the element.
func (l *lowerer) elementOf(t *ast.Term, s *scope) (*elementGroup, bool) {
	ref, ok := t.Value.(ast.Ref)
	if !ok || len(ref) < 2 || !ref.HasPrefix(ast.InputRootRef) {
		return nil, false
	}
	k, ok := ref[len(ref)-1].Value.(ast.Var)
	if _, bound := s.vars[k]; !ok || bound || s.keys[k] {
		return nil, false
	}
	coll, ok := fieldFor(ref[:len(ref)-1])
	if !ok {
		return nil, false
	}
	coll = l.intern(coll)
	g := &elementGroup{coll: coll, elem: &field{path: coll.path + "[_]", get: never}}
	s.groups[g.elem] = g
	s.keys[k] = true
	return g, true
}

// intern shares one field per path so the cache key lists each once.
func (l *lowerer) intern(f *field) *field {
	if have, ok := l.used[f.path]; ok {
		return have
	}
	f = l.fields.intern(f)
	l.used[f.path] = f
	return f
}

func (l *lowerer) baseDocument(ref ast.Ref) (any, bool) {
	keys, ok := refStrings(ref)
	if !ok {
		return nil, false
	}
	var doc any = l.data
	for _, k := range keys[1:] {
		m, ok := doc.(map[string]any)
		if !ok {
			return nil, false
		}
		if doc, ok = m[k]; !ok {
			return nil, false
		}
	}
	return doc, true
}

// unify lowers `a = b`: a binding when one side is an unbound variable,
// else an equality test.
func (l *lowerer) unify(e *ast.Expr, args []*ast.Term, s *scope) (matcher, error) {
	if len(args) != 2 {
		return nil, unsupported(e, "unification arity")
	}
	for i, a := range args {
		v, ok := a.Value.(ast.Var)
		if _, bound := s.vars[v]; !ok || bound {
			continue
		}
		if e.Negated {
			return nil, unsupported(e, "binding under not")
		}
		return l.bind(e, v, args[1-i], s)
	}
	return l.comparison(e, "equal", args, s)
}

func (l *lowerer) bind(e *ast.Expr, v ast.Var, t *ast.Term, s *scope) (matcher, error) {
	if g, ok := l.elementOf(t, s); ok {
		s.vars[v] = operand{field: g.elem}
		return someElement{g}, nil
	}
	op, err := l.operand(e, t, s)
	if err != nil {
		return nil, err
	}
	if op.undef {
		return constant(false), nil
	}
	s.vars[v] = op
	if op.field != nil {
		s.pending[v] = true
	}
	return nil, nil
}

var compareOps = map[string]compareOp{"equal": opEq, "neq": opNeq, "lt": opLt, "lte": opLte, "gt": opGt, "gte": opGte}

func (l *lowerer) comparison(e *ast.Expr, name string, args []*ast.Term, s *scope) (matcher, error) {
	ops, undef, err := l.resolve(e, args, s)
	if err != nil || undef {
		return constant(false), err
	}
	op := compareOps[name]
	a, b := ops[0], ops[1]
	if a.field == nil && b.field == nil {
		return constant(op.holds(a.value.Compare(b.value))), nil
	}
	if a.field == nil {
		a, b, op = b, a, op.flip()
	}
	want, ok := scalar(b)
	if !ok {
		return nil, unsupported(e, "comparison with a field or a composite value")
	}
	l.consume(s, args, e)
	return compare{f: a.field, op: op, want: want}, nil
}

// consume marks variables used by a positive condition that itself
// requires them to exist.
func (l *lowerer) consume(s *scope, args []*ast.Term, e *ast.Expr) {
	if e.Negated {
		return
	}
	for _, a := range args {
		if v, ok := a.Value.(ast.Var); ok {
			delete(s.pending, v)
		}
	}
}

func (l *lowerer) membership(e *ast.Expr, args []*ast.Term, s *scope) (matcher, error) {
	ops, undef, err := l.resolve(e, args, s)
	if err != nil || undef {
		return constant(false), err
	}
	elem, coll := ops[0], ops[1]
	switch {
	case elem.field != nil && coll.field == nil:
		set, ok := scalarSet(coll.value)
		if !ok {
			return nil, unsupported(e, "membership in a collection of composite values")
		}
		l.consume(s, args, e)
		return memberOf{f: elem.field, set: set}, nil
	case elem.field == nil && coll.field != nil:
		want, ok := scalar(elem)
		if !ok {
			return nil, unsupported(e, "membership of a composite value")
		}
		l.consume(s, args, e)
		return holds{f: coll.field, want: want}, nil
	}
	return nil, unsupported(e, "membership between two fields or two constants")
}

// flatten merges nested conjunctions and drops constant-true conditions.
func flatten(m allOf) allOf {
	var out allOf
	for _, c := range m {
		switch x := c.(type) {
		case allOf:
			out = append(out, flatten(x)...)
		case constant:
			if !x {
				return allOf{constant(false)}
			}
		default:
			out = append(out, c)
		}
	}
	return out
}
