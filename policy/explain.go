package policy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"

	meshrego "github.com/regomesh/regomesh/rego"
)

// Explanation is a decision with the reasoning behind it: every
// contribution rule the native program holds, whether it matched and, if
// not, the first condition that did not hold; and the entries contributed
// by packages evaluated by topdown (not traced condition by condition: use
// Engine.Trace for OPA's full trace).
type Explanation struct {
	Decision Decision    `json:"decision"`
	Rules    []RuleTrace `json:"rules"`
	// Topdown names the packages evaluated by topdown; "*" when the whole
	// bundle set is (Config.Topdown, or a shape the native program refuses).
	Topdown []string `json:"topdown,omitempty"`
	// Candidates is how many native rules the rule index left to test for
	// the input, every contribution point together; the rest could not
	// match. Rules lists them all either way.
	Candidates int `json:"candidates"`
	// Shared is how many evaluations decided conditions for many
	// candidates at once (a condition every candidate of a bucket has, or
	// a per-field lookup), and Tested how many candidates were then tested
	// one by one on the conditions left (Work). The allow_scope point is
	// not evaluated once a deny or allow decided, so its candidates count
	// in neither then.
	Shared int `json:"shared"`
	Tested int `json:"tested"`
}

// RuleTrace is one contribution rule's outcome for the input.
type RuleTrace struct {
	Package  string `json:"package"` // data.mesh.policies.<owner>.<name>
	Point    string `json:"point"`   // deny, allow, allow_scope, custom_deny, audit
	Policy   string `json:"policy"`
	Rule     string `json:"rule"`
	DryRun   bool   `json:"dry_run,omitempty"`
	Location string `json:"location,omitempty"` // file:row of the rule
	Matched  bool   `json:"matched"`
	// Failed is the first condition that did not hold; nil when matched.
	Failed *Condition `json:"failed,omitempty"`
	// Topdown marks an entry contributed by a package evaluated by topdown.
	Topdown bool `json:"topdown,omitempty"`
}

// Condition is one expression of a rule body, as its author wrote it.
type Condition struct {
	Text     string `json:"text"`
	Location string `json:"location"`
	// Undefined is set when the condition failed because an input field it
	// reads is absent (for example no source principal on a plaintext peer).
	Undefined bool `json:"undefined,omitempty"`
}

// Explain decides in (without the cache) and explains the decision.
func (e *Engine) Explain(ctx context.Context, in Input) (Explanation, error) {
	g, err := e.prepared(&in)
	if err != nil {
		return Explanation{Decision: deny(err.Error())}, err
	}
	var d Decision
	var work Work
	if g.prog != nil {
		d, work, err = g.prog.decideWork(ctx, &in)
	} else {
		d, err = g.evaluate(ctx, &in)
	}
	x := Explanation{Decision: d, Shared: work.Shared, Tested: work.Tested}
	if err != nil {
		return x, err
	}
	if g.prog == nil {
		// The whole set runs on topdown (bundle data contributes, or
		// Config.Topdown): list what every package contributed, so the
		// explanation names the entries behind the verdict.
		x.Topdown = []string{"*"}
		act, err := g.activation(ctx)
		if err != nil {
			return x, err
		}
		found, err := allContributions(ctx, act, &in)
		for _, c := range found {
			x.Rules = append(x.Rules, topdownTrace(c))
		}
		return x, err
	}
	x.Rules = g.prog.explain(&in)
	x.Candidates = g.prog.candidates(&in)
	if g.prog.fallback != nil {
		found, err := g.prog.fallback.contributions(ctx, &in)
		if err != nil {
			return x, err
		}
		x.Topdown = g.prog.fallback.packages
		for _, c := range found {
			x.Rules = append(x.Rules, topdownTrace(c))
		}
	}
	return x, nil
}

// Trace writes OPA's topdown trace of data.mesh.authz.decision for in,
// with source locations: the full story, for `policy explain --full`.
func (e *Engine) Trace(ctx context.Context, in Input, w io.Writer) error {
	g, err := e.prepared(&in)
	if err != nil {
		return err
	}
	doc, err := inputValue(&in)
	if err != nil {
		return err
	}
	ref, err := g.reference(ctx)
	if err != nil {
		return fmt.Errorf("policy: trace %s: %w", meshrego.DecisionPath, err)
	}
	tracer := topdown.NewBufferTracer()
	if _, err := ref.query.Eval(ctx, evalOptions(ctx, doc, rego.EvalQueryTracer(tracer))...); err != nil {
		return fmt.Errorf("policy: trace %s: %w", meshrego.DecisionPath, err)
	}
	var buf bytes.Buffer
	topdown.PrettyTraceWithLocation(&buf, *tracer)
	_, err = w.Write(buf.Bytes())
	return err
}

// prepared validates in (copying its request first) and returns the
// generation in force.
func (e *Engine) prepared(in *Input) (*generation, error) {
	if in.Request != nil {
		r := *in.Request
		in.Request = &r
	}
	if err := in.Prepare(); err != nil {
		return nil, err
	}
	g := e.current.Load()
	if g == nil {
		return nil, fmt.Errorf("policy: %s", ReasonNoPolicy)
	}
	return g, nil
}

// explain walks every native rule, in package and point order.
func (p *program) explain(in *Input) []RuleTrace {
	var out []RuleTrace
	for _, idx := range p.points {
		for i := range idx.rules {
			out = append(out, idx.rules[i].trace(in))
		}
	}
	return out
}

func (r *nativeRule) trace(in *Input) RuleTrace {
	t := RuleTrace{
		Package: r.pkg, Point: pointNames[r.point], Location: r.loc.String(), DryRun: r.entry.dryRun,
		Policy: text(entryField(r.entry.value, "policy", ast.String(""))),
		Rule:   text(entryField(r.entry.value, "rule", ast.String(""))),
	}
	for _, s := range r.steps {
		if !s.m.match(in) {
			t.Failed = &Condition{Text: s.text, Location: s.loc.String(), Undefined: readsAbsent(s.m, in)}
			return t
		}
	}
	t.Matched = r.cond.match(in)
	return t
}

// readsAbsent reports whether m failed on a field the input lacks.
func readsAbsent(m matcher, in *Input) bool {
	l, ok := m.(leaf)
	if !ok {
		return false
	}
	_, present := l.field().get(in)
	return !present
}

func topdownTrace(c contribution) RuleTrace {
	return RuleTrace{
		Package: fmt.Sprintf("data.mesh.policies[%q][%q]", c.owner, c.name), Point: pointNames[c.point],
		Policy: text(entryField(c.entry.value, "policy", ast.String(""))),
		Rule:   text(entryField(c.entry.value, "rule", ast.String(""))),
		DryRun: c.entry.dryRun, Matched: true, Topdown: true,
	}
}

// allContributions evaluates, with topdown, what every policy package
// contributes for in, rules and bundle data alike.
func allContributions(ctx context.Context, act *activation, in *Input) ([]contribution, error) {
	var pkgs []ast.Ref
	for owner, names := range policyDocsOf(act) {
		for _, name := range names {
			pkgs = append(pkgs, policiesRef.Append(ast.StringTerm(owner)).Append(ast.StringTerm(name)))
		}
	}
	if len(pkgs) == 0 {
		return nil, nil
	}
	slices.SortFunc(pkgs, func(a, b ast.Ref) int { return a.Compare(b) })
	q, err := prepareFallback(ctx, act, pkgs)
	if err != nil {
		return nil, err
	}
	return q.contributions(ctx, in)
}

// policyDocsOf lists the policy packages of an activated set, owner ->
// names, from its modules and its data.
func policyDocsOf(act *activation) map[string][]string {
	out := map[string][]string{}
	seen := map[string]bool{}
	add := func(owner, name string) {
		if key := owner + "\x00" + name; !seen[key] {
			seen[key] = true
			out[owner] = append(out[owner], name)
		}
	}
	depth := len(policiesRef) + 2
	for _, m := range act.compiler.Modules {
		p := m.Package.Path
		if len(p) < depth || !p.HasPrefix(policiesRef) {
			continue
		}
		owner, ok1 := p[len(policiesRef)].Value.(ast.String)
		name, ok2 := p[len(policiesRef)+1].Value.(ast.String)
		if ok1 && ok2 {
			add(string(owner), string(name))
		}
	}
	for owner, name := range dataPolicyPackages(act.data) {
		add(owner, name)
	}
	return out
}
