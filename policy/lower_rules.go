package policy

import (
	"github.com/open-policy-agent/opa/v1/ast"
)

// ruleTruth lowers a reference to a boolean helper rule (`applies`, or
// `data.mesh.policies.x.y.applies`) used as a condition: the OR of its
// bodies, with its default value when none matches. A reference to a base
// document is a constant.
func (l *lowerer) ruleTruth(e *ast.Expr, ref ast.Ref) (matcher, error) {
	rules := l.compiler.GetRulesExact(ref)
	if len(rules) == 0 {
		if len(l.compiler.GetRules(ref)) > 0 {
			return nil, unsupported(e, "reference into a rule's value "+ref.String())
		}
		doc, ok := l.baseDocument(ref)
		return constant(ok && doc != false), nil
	}
	key := ref.String()
	if l.inlining[key] {
		return nil, unsupported(e, "recursive rule "+key)
	}
	l.inlining[key] = true
	defer delete(l.inlining, key)
	return l.inline(e, rules)
}

// inline combines the definitions of one complete rule. Every non-default
// definition must produce the same constant value, so the rule's
// truthiness is: some body matches and that value is truthy, else the
// default value's truthiness.
func (l *lowerer) inline(e *ast.Expr, rules []*ast.Rule) (matcher, error) {
	var bodies anyOf
	var value, def ast.Value
	for _, r := range rules {
		if err := inlinable(e, r); err != nil {
			return nil, err
		}
		if r.Default {
			def = r.Head.Value.Value
			continue
		}
		if value != nil && value.Compare(r.Head.Value.Value) != 0 {
			return nil, unsupported(e, "rule definitions with different values")
		}
		value = r.Head.Value.Value
		b, err := l.body(r.Body)
		if err != nil {
			return nil, err
		}
		bodies = append(bodies, b)
	}
	matches := simplifyOr(bodies)
	whenMatched, whenNot := truthful(value), def != nil && truthful(def)
	switch {
	case whenMatched && whenNot:
		return constant(true), nil
	case whenMatched:
		return matches, nil
	case whenNot:
		return not{matches}, nil
	}
	return constant(false), nil
}

func inlinable(e *ast.Expr, r *ast.Rule) error {
	switch {
	case r.Head.RuleKind() != ast.SingleValue || len(r.Head.Args) > 0:
		return unsupported(e, "reference to a function or multi-value rule "+r.Head.Ref().String())
	case r.Else != nil:
		return unsupported(e, "rule with else "+r.Head.Ref().String())
	case r.Head.Value == nil || !r.Head.Value.IsGround():
		return unsupported(e, "rule with a computed value "+r.Head.Ref().String())
	}
	return nil
}

func truthful(v ast.Value) bool {
	return v != nil && v.Compare(ast.Boolean(false)) != 0
}

func simplifyOr(bodies anyOf) matcher {
	if len(bodies) == 1 {
		return bodies[0]
	}
	return bodies
}
