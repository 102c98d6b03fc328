package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

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
	rs, err := r.query.Eval(ctx, evalOptions(ctx, doc)...)
	if err != nil {
		return deny("evaluation failed: " + err.Error()), fmt.Errorf("policy: evaluate %s: %w", meshrego.DecisionPath, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return deny(ReasonUndefined), fmt.Errorf("%w: %s", ErrUndefined, meshrego.DecisionPath)
	}
	return decodeDecision(rs[0].Expressions[0].Value)
}

type evalTimeKey struct{}

// WithTime returns a context under which decisions see t as the current
// time (Rego's time.now_ns): to replay a logged decision at the moment it
// was made, or to ask offline whether a time-based rule would pass at a
// given hour. Without it, decisions use the clock.
func WithTime(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, evalTimeKey{}, t)
}

// evalOptions are the topdown options of one evaluation of doc under ctx.
func evalOptions(ctx context.Context, doc ast.Value, more ...rego.EvalOption) []rego.EvalOption {
	opts := append([]rego.EvalOption{rego.EvalParsedInput(doc)}, more...)
	if t, ok := ctx.Value(evalTimeKey{}).(time.Time); ok {
		opts = append(opts, rego.EvalTime(t))
	}
	return opts
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
