package policy

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"

	meshrego "github.com/regomesh/regomesh/rego"
)

// reference evaluates data.mesh.authz.decision with OPA's topdown
// evaluator: the reference semantics, and the path for bundle sets the
// native program cannot take.
type reference struct {
	query rego.PreparedEvalQuery
}

func prepareReference(ctx context.Context, act *activation) (*reference, error) {
	q, err := rego.New(
		rego.Query(meshrego.DecisionPath),
		rego.Compiler(act.compiler),
		rego.Store(act.store),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: prepare %s: %w", meshrego.DecisionPath, err)
	}
	return &reference{query: q}, nil
}

func (r *reference) decide(ctx context.Context, in *Input) (Decision, error) {
	doc, err := inputValue(in)
	if err != nil {
		return deny(err.Error()), err
	}
	rs, err := r.query.Eval(ctx, rego.EvalParsedInput(doc))
	if err != nil {
		return deny("evaluation failed: " + err.Error()), fmt.Errorf("policy: evaluate %s: %w", meshrego.DecisionPath, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return deny(ReasonUndefined), fmt.Errorf("%w: %s", ErrUndefined, meshrego.DecisionPath)
	}
	return decodeDecision(rs[0].Expressions[0].Value)
}

// inputValue converts the input to its ast form through its JSON form, so
// Rego sees exactly the documented document.
func inputValue(in *Input) (ast.Value, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("policy: encode input: %w", err)
	}
	var doc any
	if err := util.UnmarshalJSON(b, &doc); err != nil {
		return nil, fmt.Errorf("policy: encode input: %w", err)
	}
	return ast.InterfaceToValue(doc)
}

// decodeDecision reads the library's decision object.
func decodeDecision(result any) (Decision, error) {
	v, err := ast.InterfaceToValue(result)
	obj, ok := v.(ast.Object)
	if err != nil || !ok {
		return deny(ReasonUndefined), fmt.Errorf("%w: decision is not an object: %v", ErrUndefined, result)
	}
	d := Decision{Verdict: verdictValue(obj), Audit: []PolicyRule{}}
	if audit, ok := entryField(obj, "audit", nil).(*ast.Array); ok {
		audit.Foreach(func(t *ast.Term) {
			d.Audit = append(d.Audit, PolicyRule{
				Policy: text(entryField(t.Value, "policy", ast.String(""))),
				Rule:   text(entryField(t.Value, "rule", ast.String(""))),
			})
		})
	}
	if dry, ok := entryField(obj, "dry_run", nil).(ast.Object); ok {
		v := verdictValue(dry)
		d.DryRun = &v
	}
	return d, nil
}

func verdictValue(obj ast.Object) Verdict {
	return Verdict{
		Allow:  entryField(obj, "allow", nil) == ast.Boolean(true),
		Policy: text(entryField(obj, "policy", ast.String(""))),
		Rule:   text(entryField(obj, "rule", ast.String(""))),
		Reason: text(entryField(obj, "reason", ast.String(""))),
	}
}
