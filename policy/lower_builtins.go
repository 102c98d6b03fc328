package policy

import (
	"net/netip"
	"regexp"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The builtins the native program covers, each lowered to one leaf over
// an input field and constant arguments.

func (l *lowerer) stringBuiltin(e *ast.Expr, name string, args []*ast.Term, s *scope) (matcher, error) {
	f, arg, err := l.fieldAndString(e, args, 0, s)
	if err != nil || f == nil {
		return constant(false), err
	}
	op := map[string]stringOp{"startswith": opPrefix, "endswith": opSuffix, "contains": opContains}[name]
	return stringTest{f: f, op: op, arg: arg}, nil
}

func (l *lowerer) cidr(e *ast.Expr, args []*ast.Term, s *scope) (matcher, error) {
	f, cidr, err := l.fieldAndString(e, args, 1, s)
	if err != nil || f == nil {
		return constant(false), err
	}
	prefix, perr := netip.ParsePrefix(cidr)
	if perr != nil {
		return nil, unsupported(e, "CIDR "+cidr+" does not parse")
	}
	return cidrContains{f: f, prefix: prefix.Masked()}, nil
}

func (l *lowerer) regex(e *ast.Expr, args []*ast.Term, s *scope) (matcher, error) {
	f, pattern, err := l.fieldAndString(e, args, 1, s)
	if err != nil || f == nil {
		return constant(false), err
	}
	re, rerr := regexp.Compile(pattern)
	if rerr != nil {
		return nil, unsupported(e, "regex does not compile")
	}
	return regexMatch{f: f, re: re}, nil
}

// fieldAndString resolves a two-argument builtin whose argument fieldAt is
// an input field and whose other argument is a constant string.
func (l *lowerer) fieldAndString(e *ast.Expr, args []*ast.Term, fieldAt int, s *scope) (*field, string, error) {
	if len(args) != 2 {
		return nil, "", unsupported(e, "arity")
	}
	ops, undef, err := l.resolve(e, args, s)
	if err != nil || undef {
		return nil, "", err
	}
	f, c := ops[fieldAt], ops[1-fieldAt]
	str, ok := c.value.(ast.String)
	if f.field == nil || c.field != nil || !ok {
		return nil, "", unsupported(e, "expects an input field and a constant string")
	}
	l.consume(s, args, e)
	return f.field, string(str), nil
}

// transform binds the output of lower/upper on a field to a derived field.
func (l *lowerer) transform(e *ast.Expr, name string, args []*ast.Term, s *scope) error {
	if len(args) != 2 || e.Negated {
		return unsupported(e, "transform form")
	}
	out, ok := args[1].Value.(ast.Var)
	if _, bound := s.vars[out]; !ok || bound {
		return unsupported(e, "transform output is not a fresh variable")
	}
	in, err := l.operand(e, args[0], s)
	if err != nil {
		return err
	}
	if in.field == nil || s.groups[in.field] != nil {
		return unsupported(e, "transform of a constant or of an iterated element")
	}
	fn := strings.ToLower
	if name == "upper" {
		fn = strings.ToUpper
	}
	get := in.field.get
	derived := &field{path: name + "(" + in.field.path + ")", get: func(x *Input) (value, bool) {
		v, ok := get(x)
		if !ok || v.kind != kindString {
			return value{}, false
		}
		return stringValue(fn(v.s)), true
	}}
	s.vars[out] = operand{field: l.intern(derived)}
	s.pending[out] = true
	if v, ok := args[0].Value.(ast.Var); ok {
		delete(s.pending, v)
	}
	return nil
}

func scalar(op operand) (value, bool) {
	if op.field != nil {
		return value{}, false
	}
	switch v := op.value.(type) {
	case ast.Null:
		return value{kind: kindNull}, true
	case ast.Boolean:
		return value{kind: kindBool, b: bool(v)}, true
	case ast.Number:
		f, ok := v.Float64()
		return value{kind: kindNumber, n: f}, ok
	case ast.String:
		return stringValue(string(v)), true
	}
	return value{}, false
}

// scalarSet returns the elements (arrays, sets) or values (objects) of a
// constant collection, all of which must be scalars.
func scalarSet(coll ast.Value) (keySet, bool) {
	var keys []valueKey
	ok := true
	add := func(t *ast.Term) {
		v, isScalar := scalar(operand{value: t.Value})
		ok = ok && isScalar
		keys = append(keys, v.key())
	}
	switch c := coll.(type) {
	case *ast.Array:
		c.Foreach(add)
	case ast.Set:
		c.Foreach(add)
	case ast.Object:
		c.Foreach(func(_, v *ast.Term) { add(v) })
	default:
		return keySet{}, false
	}
	return newKeySet(keys), ok
}
