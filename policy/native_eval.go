package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// decide evaluates the program for a prepared input.
func (p *program) decide(ctx context.Context, in *Input) (Decision, error) {
	d, _, err := p.decideWork(ctx, in)
	return d, err
}

// decideWork evaluates the program for a prepared input and says what it
// took. The allow_scope point is evaluated only when the verdict may read
// it: not once a custom_deny, deny or allow entry decided, unless an
// allow_scope rule contributes a dry-run entry (which would show in the
// decision's dry-run verdict).
func (p *program) decideWork(ctx context.Context, in *Input) (Decision, Work, error) {
	acc := accumulators.Get().(*accumulator)
	defer acc.release()
	for i := range p.keys {
		for _, b := range p.keys[i].lookup(in) {
			acc.decideLater(b, in)
		}
	}
	for _, idx := range p.points {
		if idx.scan != nil {
			acc.decideLater(idx.scan, in)
		}
	}
	if p.points[pointAllowScope].dryRun || !acc.decided() {
		for _, b := range acc.later {
			b.decide(in, acc)
		}
	}
	work := acc.plans.work
	if p.fallback != nil {
		if err := p.fallback.eval(ctx, in, acc); err != nil {
			return deny(err.Error()), work, err
		}
	}
	return acc.decision(p.reasons), work, nil
}

// decideLater decides b now, or keeps it for later if it is of allow_scope.
func (a *accumulator) decideLater(b *bucket, in *Input) {
	if b.point == pointAllowScope {
		a.later = append(a.later, b)
		return
	}
	b.decide(in, a)
}

// decided reports whether an enforced custom_deny, deny or allow entry
// was found: the enforced verdict no longer depends on allow_scope.
func (a *accumulator) decided() bool {
	return a.enforced[pointCustomDeny] != nil || a.enforced[pointDeny] != nil || a.enforced[pointAllow] != nil
}

// accumulators are pooled so a decision allocates nothing to gather
// entries: their slices keep their capacity from one decision to the next.
var accumulators = sync.Pool{New: func() any { return new(accumulator) }}

func (a *accumulator) release() {
	clear(a.scope)
	clear(a.audit)
	clear(a.later)
	clear(a.whole)
	plans := a.plans
	clear(plans.hits)
	plans.hits = plans.hits[:0]
	plans.work = Work{}
	*a = accumulator{scope: a.scope[:0], audit: a.audit[:0], names: a.names[:0], plans: plans,
		later: a.later[:0], whole: a.whole[:0]}
	accumulators.Put(a)
}

// candidates counts the native rules the index hands over for a prepared
// input, every point together: the work the rule index leaves.
func (p *program) candidates(in *Input) int {
	n := 0
	for i := range p.keys {
		for _, b := range p.keys[i].lookup(in) {
			n += len(b.rules)
		}
	}
	for _, idx := range p.points {
		if idx.scan != nil {
			n += len(idx.scan.rules)
		}
	}
	return n
}

// accumulator gathers matched entries the way the library reads them: the
// smallest entry per point (enforced only, and all for the dry-run verdict),
// the selecting ALLOW policies, and the AUDIT entries.
type accumulator struct {
	enforced  [pointAllowScope]*entry // smallest enforced custom_deny, deny, allow
	all       [pointAllowScope]*entry // smallest including dry-run entries
	scope     []*entry                // allow_scope, all
	audit     []*entry                // enforced audit
	hasDryRun bool
	names     []*entry      // scratch for a verdict's selecting policies
	plans     planWork      // the bucket plans' working memory, and the work done
	later     []*bucket     // allow_scope buckets, decided if the verdict needs them
	whole     []*wholeScope // allow_scope buckets every rule of which holds
}

func (a *accumulator) add(pt int, e *entry) {
	a.hasDryRun = a.hasDryRun || e.dryRun
	switch pt {
	case pointAllowScope:
		a.scope = append(a.scope, e)
	case pointAudit:
		if e.enforced {
			a.audit = append(a.audit, e)
		}
	default:
		a.all[pt] = smaller(a.all[pt], e)
		if e.enforced {
			a.enforced[pt] = smaller(a.enforced[pt], e)
		}
	}
}

func smaller(have, e *entry) *entry {
	if have == nil || e.value.Compare(have.value) < 0 {
		return e
	}
	return have
}

// decision is the library's verdict on the gathered entries; reasons
// (nil: none) remembers the reasons that list selecting policies.
func (a *accumulator) decision(reasons *reasonMemo) Decision {
	if len(a.whole) > 1 || len(a.whole) == 1 && len(a.scope) > 0 {
		for _, ws := range a.whole {
			a.scope = append(a.scope, ws.entries...)
		}
		a.whole = a.whole[:0]
	}
	d := Decision{Verdict: a.verdict(a.enforced, true, reasons), Audit: a.auditRules()}
	if a.hasDryRun {
		dry := a.verdict(a.all, false, reasons)
		d.DryRun = &dry
	}
	return d
}

// verdict mirrors the library's verdict(sets).
func (a *accumulator) verdict(smallest [pointAllowScope]*entry, enforcedOnly bool, reasons *reasonMemo) Verdict {
	switch {
	case smallest[pointCustomDeny] != nil:
		return decided(false, smallest[pointCustomDeny], "denied by CUSTOM policy")
	case smallest[pointDeny] != nil:
		return decided(false, smallest[pointDeny], "denied by DENY policy")
	case smallest[pointAllow] != nil:
		return decided(true, smallest[pointAllow], "allowed by ALLOW policy")
	}
	names := a.names[:0]
	for _, s := range a.scope {
		if s.enforced || !enforcedOnly {
			names = append(names, s)
		}
	}
	a.names = names
	if len(names) == 0 && len(a.whole) == 1 {
		return Verdict{Reason: a.whole[0].reason} // the only selecting policies
	}
	if len(names) == 0 {
		return Verdict{Allow: true, Reason: "no ALLOW policy selects the destination"}
	}
	if !slices.IsSortedFunc(names, byRank) {
		slices.SortFunc(names, byRank)
	}
	return Verdict{Reason: reasons.selecting(names)}
}

// byRank orders scope entries by name: by rank when both have one (native
// entries), else by the name itself (topdown's entries have none).
func byRank(x, y *entry) int {
	if x.rank > 0 && y.rank > 0 {
		return int(x.rank) - int(y.rank)
	}
	return strings.Compare(x.name, y.name)
}

const noAllowMatched = "no ALLOW policy matched; selecting the destination: "

// selectingReason lists the distinct names of ranked scope entries.
func selectingReason(names []*entry) string {
	n := len(noAllowMatched)
	for i, e := range names {
		if i == 0 || e.name != names[i-1].name {
			n += len(e.name) + 2
		}
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(noAllowMatched)
	for i, e := range names {
		if i > 0 && e.name == names[i-1].name {
			continue
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(e.name)
	}
	return b.String()
}

func decided(allow bool, e *entry, why string) Verdict {
	v := Verdict{Allow: allow, Policy: e.policy, Rule: e.rule, Reason: why}
	if e.hasReason {
		v.Reason = e.reason
	}
	return v
}

func entryField(entry ast.Value, key string, def ast.Value) ast.Value {
	if obj, ok := entry.(ast.Object); ok {
		if v := obj.Get(ast.StringTerm(key)); v != nil {
			return v.Value
		}
	}
	return def
}

// scopeName mirrors the library's name(entry).
func scopeName(entry ast.Value) string {
	if p, ok := entryField(entry, "policy", nil).(ast.String); ok {
		return string(p)
	}
	return entry.String()
}

func (a *accumulator) auditRules() []PolicyRule {
	if len(a.audit) == 0 {
		return []PolicyRule{}
	}
	slices.SortFunc(a.audit, func(x, y *entry) int { return x.value.Compare(y.value) })
	a.audit = slices.CompactFunc(a.audit, func(x, y *entry) bool { return x.value.Compare(y.value) == 0 })
	out := make([]PolicyRule, len(a.audit))
	for i, e := range a.audit {
		out[i] = PolicyRule{Policy: e.policy, Rule: e.rule}
	}
	return out
}

// text renders a decision field: strings as they are, anything else as JSON.
func text(v ast.Value) string {
	switch x := v.(type) {
	case ast.String:
		return string(x)
	case ast.Number:
		return string(x)
	}
	b, err := json.Marshal(ast.MustJSON(v))
	if err != nil {
		return v.String()
	}
	return string(b)
}

// fallbackQuery evaluates, with topdown, the contributions of the packages
// the lowering does not cover, in one query per decision.
type fallbackQuery struct {
	query    rego.PreparedEvalQuery
	packages []string // the packages it evaluates
}

func prepareFallback(ctx context.Context, act *activation, pkgs []ast.Ref) (*fallbackQuery, error) {
	names := make([][2]string, len(pkgs))
	for i, p := range pkgs {
		o, _ := p[len(policiesRef)].Value.(ast.String)
		n, _ := p[len(policiesRef)+1].Value.(ast.String)
		names[i] = [2]string{string(o), string(n)}
	}
	list, _ := json.Marshal(names)
	points, _ := json.Marshal(pointNames)
	src := fmt.Sprintf("[[o, n, p, e] | some [o, n] in %s; some p in %s; doc := data.mesh.policies[o][n][p]; some e in data.mesh.authz.package_entries(doc, o, n, p)]", list, points)
	q, err := rego.New(rego.Query(src), rego.Compiler(act.compiler), rego.Store(act.store)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: prepare topdown query for %s: %w", src, err)
	}
	fq := &fallbackQuery{query: q}
	for _, p := range pkgs {
		fq.packages = append(fq.packages, p.String())
	}
	return fq, nil
}

// contribution is one entry a topdown package contributed.
type contribution struct {
	owner, name string
	point       int
	entry       *entry
}

func (f *fallbackQuery) eval(ctx context.Context, in *Input, acc *accumulator) error {
	found, err := f.contributions(ctx, in)
	for _, c := range found {
		acc.add(c.point, c.entry)
	}
	return err
}

// contributions evaluates the topdown packages for in.
func (f *fallbackQuery) contributions(ctx context.Context, in *Input) ([]contribution, error) {
	doc, err := inputValue(in)
	if err != nil {
		return nil, err
	}
	rs, err := f.query.Eval(ctx, evalOptions(ctx, doc)...)
	if err != nil {
		return nil, fmt.Errorf("policy: evaluate: %w", err)
	}
	if len(rs) == 0 {
		return nil, nil
	}
	rows, _ := rs[0].Expressions[0].Value.([]any)
	out := make([]contribution, 0, len(rows))
	for _, row := range rows {
		r, _ := row.([]any)
		if len(r) != 4 {
			continue
		}
		v, err := ast.InterfaceToValue(r[3])
		if err != nil {
			return nil, fmt.Errorf("policy: contribution %v: %w", r[3], err)
		}
		owner, _ := r[0].(string)
		name, _ := r[1].(string)
		point, _ := r[2].(string)
		out = append(out, contribution{owner: owner, name: name, point: slices.Index(pointNames[:], point), entry: newEntry(v)})
	}
	return out, nil
}
