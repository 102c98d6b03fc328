package policy

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Compiling the translator's fragment without a compiler (issue #15).
//
// OPA's compiler is most of a load's cost, yet for the Rego the Istio
// translator writes it does little: it resolves rule names to their refs,
// turns == into unification, and binds each input reference passed to a
// builtin to a local first. fragmentCompile does exactly that for a
// package in a narrow fragment (fragmentRule), and refuses anything else,
// which the compiler then takes. TestFragmentCompileEqualsOPA holds it to
// OPA: for every module of the translator's goldens, cases and load
// benchmarks, what it returns equals, field by field and location by
// location, what ast.Compiler makes of the package alone.
//
// The fragment, per module: no imports, annotations or comments-as-
// metadata; rules `name if {...}`, `name := v if {...}` or
// `name contains v if {...}` with a constant value and a plain name that
// shadows no root document, builtin or keyword; bodies of
//   - a rule of the package, or its negation;
//   - input.a.b == c, or its negation, c a scalar constant;
//   - input.a.b != c;
//   - input.a.b in {c, ...} (or [c, ...]), constants scalars;
//   - net.cidr_contains("...", input.a.b), regex.match("...", input.a.b);
//   - startswith(input.a.b, "..."), endswith(input.a.b, "...").
// Such a module reads only the input and its own package's rules (so its
// package is closed), cannot fail to compile, and its rules' types need no
// checking beyond the shapes above.

// fragmentCompile returns the compiled rules of a closed policy package,
// in the order the compiler holds them (modules by file name, then rules
// in order), when every module is in the fragment; false otherwise.
func fragmentCompile(path ast.Ref, modules map[string]*ast.Module) ([]*ast.Rule, bool) {
	files := slices.Sorted(maps.Keys(modules))
	names := map[ast.Var]bool{}
	kinds := map[ast.Var]ast.RuleKind{}
	for _, f := range files {
		m := modules[f]
		if m.RegoVersion() != ast.RegoV1 || !m.Package.Path.Equal(path) || len(m.Imports) > 0 || len(m.Annotations) > 0 {
			return nil, false
		}
		for _, r := range m.Rules {
			if !fragmentHead(r) {
				return nil, false
			}
			if k, seen := kinds[r.Head.Name]; seen && k != r.Head.RuleKind() {
				return nil, false // conflicting rules
			}
			names[r.Head.Name], kinds[r.Head.Name] = true, r.Head.RuleKind()
		}
	}
	for _, f := range files {
		for _, r := range modules[f].Rules {
			for _, e := range r.Body {
				if !fragmentExpr(e, names) {
					return nil, false
				}
			}
		}
	}
	if recursive(modules) {
		return nil, false
	}
	gen := 0
	var out []*ast.Rule
	for _, f := range files {
		for _, r := range modules[f].Rules {
			// A copy of what the compiler rewrites; the terms it keeps are
			// shared with the parsed module, which nothing modifies.
			cr, head := *r, *r.Head
			head.Args = ast.Args{}
			cr.Head, cr.Body = &head, compileFragmentBody(path, r.Body, &gen)
			out = append(out, &cr)
		}
	}
	return out, true
}

// recursive reports whether a rule of the modules reaches itself through
// the rule names in bodies (which the compiler refuses).
func recursive(modules map[string]*ast.Module) bool {
	uses := map[ast.Var][]ast.Var{}
	for _, m := range modules {
		for _, r := range m.Rules {
			for _, e := range r.Body {
				if t, ok := e.Terms.(*ast.Term); ok {
					uses[r.Head.Name] = append(uses[r.Head.Name], t.Value.(ast.Var))
				}
			}
		}
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[ast.Var]int{}
	var visit func(v ast.Var) bool
	visit = func(v ast.Var) bool {
		switch state[v] {
		case visiting:
			return true
		case done:
			return false
		}
		state[v] = visiting
		for _, u := range uses[v] {
			if visit(u) {
				return true
			}
		}
		state[v] = done
		return false
	}
	for v := range uses {
		if visit(v) {
			return true
		}
	}
	return false
}

// fragmentHead: a plain rule with a constant value or key.
func fragmentHead(r *ast.Rule) bool {
	h := r.Head
	switch {
	case r.Else != nil || r.Default || len(r.Annotations) > 0 || len(h.Args) > 0 || len(h.Reference) != 1:
		return false
	case !fragmentName(h.Name) || h.Reference[0].Value.Compare(h.Name) != 0:
		return false
	}
	switch h.RuleKind() {
	case ast.MultiValue:
		return h.Value == nil && h.Key != nil && constantTerm(h.Key)
	case ast.SingleValue:
		return h.Key == nil && h.Value != nil && constantTerm(h.Value)
	}
	return false
}

// constantTerm: a ground term without refs or calls (an entry, a boolean).
func constantTerm(t *ast.Term) bool {
	ok := t.IsGround()
	ast.WalkTerms(t, func(x *ast.Term) bool {
		switch v := x.Value.(type) {
		case ast.Object:
			// The parser keeps a key written twice, the compiler does not.
			seen := map[string]bool{}
			for _, k := range v.Keys() {
				ok = ok && !seen[k.String()]
				seen[k.String()] = true
			}
		case ast.Ref, ast.Call, *ast.ArrayComprehension, *ast.SetComprehension, *ast.ObjectComprehension, *ast.TemplateString:
			ok = false
		}
		return !ok
	})
	return ok
}

// fragmentName: a rule name that shadows nothing the compiler resolves
// differently: not a root document, a builtin (or a builtin's namespace), a
// keyword, or a name the compiler generates.
func fragmentName(v ast.Var) bool {
	s := string(v)
	return s != "" && !strings.HasPrefix(s, "__") && !reservedNames()[s] && !ast.RootDocumentNames.Contains(ast.VarTerm(s))
}

var reservedNames = sync.OnceValue(func() map[string]bool {
	out := map[string]bool{"input": true, "data": true, "future": true, "rego": true, "_": true}
	for name := range ast.BuiltinMap {
		out[strings.Split(name, ".")[0]] = true
	}
	for _, kw := range []string{"if", "in", "contains", "every", "some", "not", "with", "as", "default", "else", "package", "import", "true", "false", "null"} {
		out[kw] = true
	}
	return out
})

// fragmentCalls are the builtins of the fragment, with which argument
// (0 or 1) is the input reference; the other is a constant, a string
// except for ==, != and in.
var fragmentCalls = map[string]int{
	"equal": -1, "neq": -1, "internal.member_2": 0,
	"net.cidr_contains": 1, "regex.match": 1, "startswith": 0, "endswith": 0,
}

func fragmentExpr(e *ast.Expr, rules map[ast.Var]bool) bool {
	if len(e.With) > 0 || e.Generated {
		return false
	}
	switch t := e.Terms.(type) {
	case *ast.Term:
		v, ok := t.Value.(ast.Var)
		return ok && rules[v]
	case []*ast.Term:
		if len(t) != 3 {
			return false
		}
		name := e.Operator().String()
		at, ok := fragmentCalls[name]
		if !ok || e.Negated && name != "equal" {
			return false
		}
		a, b := t[1], t[2]
		switch name {
		case "equal", "neq":
			return inputRef(a) && scalarTerm(b)
		case "internal.member_2":
			return inputRef(a) && scalarCollection(b)
		}
		if at == 1 {
			a, b = b, a
		}
		_, isString := b.Value.(ast.String)
		return inputRef(a) && isString
	}
	return false
}

// inputRef: input.a.b..., every part a string.
func inputRef(t *ast.Term) bool {
	ref, ok := t.Value.(ast.Ref)
	if !ok || len(ref) < 2 || !ref[0].Equal(ast.InputRootDocument) {
		return false
	}
	for _, p := range ref[1:] {
		if _, ok := p.Value.(ast.String); !ok {
			return false
		}
	}
	return true
}

func scalarTerm(t *ast.Term) bool {
	switch t.Value.(type) {
	case ast.String, ast.Number, ast.Boolean, ast.Null:
		return true
	}
	return false
}

func scalarCollection(t *ast.Term) bool {
	ok := true
	each := func(x *ast.Term) { ok = ok && scalarTerm(x) }
	switch c := t.Value.(type) {
	case ast.Set:
		c.Foreach(each)
	case *ast.Array:
		c.Foreach(each)
	default:
		return false
	}
	return ok
}

// compileFragmentBody rewrites a fragment body (a copy) as the compiler
// does: rule names become refs into the package, == becomes unification,
// and an input reference passed to another builtin is bound to a local
// first (__localN__, numbered across the package).
func compileFragmentBody(pkg ast.Ref, body ast.Body, gen *int) ast.Body {
	out := make(ast.Body, 0, len(body)+2)
	for _, parsed := range body {
		e := *parsed
		switch t := e.Terms.(type) {
		case *ast.Term:
			e.Terms = ruleRefTerm(pkg, t)
		case []*ast.Term:
			t = slices.Clone(t)
			e.Terms = t
			if e.Operator().Equal(ast.Equal.Ref()) {
				t[0] = ast.NewTerm(ast.Equality.Ref())
				break
			}
			for i := 1; i < len(t); i++ {
				if _, ok := t[i].Value.(ast.Ref); !ok {
					continue
				}
				local := ast.NewTerm(ast.Var("__local" + strconv.Itoa(*gen) + "__")).SetLocation(t[i].Location)
				*gen++
				bind := ast.Equality.Expr(local, t[i])
				bind.Generated = true
				bind.Location = t[i].Location
				out.Append(bind)
				t[i] = local
			}
		}
		out.Append(&e)
	}
	return out
}

// ruleRefTerm is the compiler's resolution of a rule name: the rule's ref,
// each part located at the name.
func ruleRefTerm(pkg ast.Ref, t *ast.Term) *ast.Term {
	ref := make(ast.Ref, 0, len(pkg)+1)
	for _, p := range pkg {
		ref = append(ref, ast.NewTerm(p.Value).SetLocation(t.Location))
	}
	ref = append(ref, ast.StringTerm(string(t.Value.(ast.Var))).SetLocation(t.Location))
	return ast.NewTerm(ref).SetLocation(t.Location)
}

// fragmentRules are one package's rules compiled by fragmentCompile, as
// the lowerer looks them up.
type fragmentRules struct {
	pkg   ast.Ref
	rules []*ast.Rule
}

// GetRulesExact returns the rules whose ref, within the package, is ref.
func (f fragmentRules) GetRulesExact(ref ast.Ref) []*ast.Rule {
	var out []*ast.Rule
	for _, r := range f.rules {
		if full := f.pkg.Extend(r.Head.Ref()); full.Equal(ref) {
			out = append(out, r)
		}
	}
	return out
}

// GetRules returns the rules ref may refer to: those whose ref is a prefix
// of ref or has ref as a prefix, as ast.Compiler.GetRules.
func (f fragmentRules) GetRules(ref ast.Ref) []*ast.Rule {
	var out []*ast.Rule
	for _, r := range f.rules {
		if full := f.pkg.Extend(r.Head.Ref()); ref.HasPrefix(full) || full.HasPrefix(ref) {
			out = append(out, r)
		}
	}
	return out
}
