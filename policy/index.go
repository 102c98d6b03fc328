package policy

import (
	"cmp"
	"math/bits"
	"slices"
	"strings"
)

// ruleIndex finds the rules of one contribution point that can match an
// input without testing them all, as OPA's rule index does: each rule is
// filed under one equality (or set membership) condition on one field, so
// a decision costs a map lookup per indexed field (shared by every point:
// programKey) plus the candidates, which a bucket's plan decides together
// (plan.go).
//
// Invariant: every rule is either in scan or under exactly one field, once
// per value of its key condition; a rule's full condition is always tested,
// so the index only ever prunes rules that cannot match.
type ruleIndex struct {
	rules []nativeRule
	// tests[i] is what a lookup leaves to test of rules[i]: its condition
	// without the one it is filed under, which the lookup decided.
	tests []allOf
	keyed []keyedRules
	scan  *bucket
	// dryRun: some rule contributes a dry-run entry.
	dryRun bool
}

// keyedRules are the buckets of one field, by value.
type keyedRules struct {
	field   *field
	byValue map[valueKey]*bucket
}

// keyCandidate is one condition a rule could be filed under: cond[at].
// The rule's condition without it is what a lookup on it leaves to test,
// made only for the candidate chosen (rest), not kept for every one.
type keyCandidate struct {
	field  *field
	values []valueKey
	at     int
}

// rest is cond without the candidate's condition.
func (c keyCandidate) rest(cond allOf) allOf {
	return slices.Delete(slices.Clone(cond), c.at, c.at+1)
}

// buildIndex files rules under their best keys. A rule's candidates are
// found once, when it is lowered (nativeRule.keys), so a program
// assembled again from cached packages only counts values, files rules
// and makes each rule's remaining condition (keyCandidate.rest).
func buildIndex(rules []nativeRule, point int) *ruleIndex {
	idx := &ruleIndex{rules: rules, tests: make([]allOf, len(rules))}
	distinct := distinctValues(rules)
	byField := map[*field]map[valueKey][]int32{}
	var fields []*field
	var scan []int32
	for i, r := range rules {
		idx.dryRun = idx.dryRun || r.entry.dryRun
		best, ok := bestKey(r.keys, distinct)
		if !ok {
			scan = append(scan, int32(i))
			idx.tests[i] = r.cond
			continue
		}
		idx.tests[i] = best.rest(r.cond)
		k := byField[best.field]
		if k == nil {
			k = map[valueKey][]int32{}
			byField[best.field] = k
			fields = append(fields, best.field)
		}
		for _, v := range best.values {
			k[v] = append(k[v], int32(i))
		}
	}
	for _, f := range fields {
		k := keyedRules{field: f, byValue: make(map[valueKey]*bucket, len(byField[f]))}
		for v, rs := range byField[f] {
			k.byValue[v] = newBucket(idx, point, rs)
		}
		idx.keyed = append(idx.keyed, k)
	}
	if len(scan) > 0 {
		idx.scan = newBucket(idx, point, scan)
	}
	return idx
}

// keyCandidates lists a condition's top-level equalities and memberships.
func keyCandidates(cond allOf) []keyCandidate {
	var out []keyCandidate
	for at, c := range cond {
		var values []valueKey
		var f *field
		switch m := c.(type) {
		case compare:
			if m.op != opEq {
				continue
			}
			f, values = m.f, []valueKey{m.want.key()}
		case memberOf:
			if m.set.len() == 0 {
				continue // holds for nothing: no value to file the rule under
			}
			f, values = m.f, m.set.sorted() // sorted: a rule lowers the same every time
		default:
			continue
		}
		out = append(out, keyCandidate{field: f, values: values, at: at})
	}
	return out
}

// compareKeys orders value keys by kind, then value.
func compareKeys(a, b valueKey) int {
	return cmp.Or(cmp.Compare(a.kind, b.kind), compareBools(a.b, b.b), cmp.Compare(a.n, b.n), strings.Compare(a.s, b.s))
}

func compareBools(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// fieldValue is one value a rule's key condition tests a field against.
type fieldValue struct {
	f *field
	v valueKey
}

// distinctValues counts, per field, the distinct key values rules test it
// against: the more, the more a lookup on that field prunes.
func distinctValues(rules []nativeRule) map[*field]int {
	seen := make(map[fieldValue]struct{}, len(rules))
	out := map[*field]int{}
	for _, r := range rules {
		for _, c := range r.keys {
			for _, v := range c.values {
				if _, ok := seen[fieldValue{c.field, v}]; !ok {
					seen[fieldValue{c.field, v}] = struct{}{}
					out[c.field]++
				}
			}
		}
	}
	return out
}

// bestKey picks, among a rule's candidates, the one on the most selective
// field; a membership in many values is penalised by its size.
func bestKey(candidates []keyCandidate, distinct map[*field]int) (keyCandidate, bool) {
	var best keyCandidate
	bestScore := 0
	for _, c := range candidates {
		if len(c.values) == 0 {
			continue
		}
		score := distinct[c.field] / len(c.values)
		if score > bestScore {
			best, bestScore = c, score
		}
	}
	return best, bestScore > 0
}

// programKey is a field rules are filed under, at any point: one lookup
// per decision finds the buckets of every point under the input's value.
type programKey struct {
	field   *field
	byValue valueMap[[]*bucket]
}

// programKeys merges the points' keyed fields, in the order first seen.
func programKeys(points [numPoints]*ruleIndex) []programKey {
	byField := map[*field]map[valueKey][]*bucket{}
	var fields []*field
	for _, idx := range points {
		for _, k := range idx.keyed {
			if byField[k.field] == nil {
				byField[k.field] = map[valueKey][]*bucket{}
				fields = append(fields, k.field)
			}
			for v, b := range k.byValue {
				byField[k.field][v] = append(byField[k.field][v], b)
			}
		}
	}
	out := make([]programKey, len(fields))
	for i, f := range fields {
		out[i].field = f
		for v, bs := range byField[f] {
			out[i].byValue.put(v, bs)
		}
	}
	return out
}

// lookup is the buckets filed under in's value of the field.
func (k *programKey) lookup(in *Input) []*bucket {
	v, ok := k.field.get(in)
	if !ok {
		return nil
	}
	bs, _ := k.byValue.get(v)
	return bs
}

// decide adds to acc, as its point, every rule of b that holds for in.
func (b *bucket) decide(in *Input, acc *accumulator) {
	w := &acc.plans
	w.work.Candidates += len(b.rules)
	idx := b.idx
	if b.plan == nil {
		w.work.Tested += len(b.rules)
		for _, r := range b.rules {
			if idx.tests[r].match(in) {
				acc.add(b.point, idx.rules[r].entry)
			}
		}
		return
	}
	alive := b.plan.survivors(in, w)
	if b.scope != nil && slices.Equal(alive, b.plan.full) {
		acc.whole = append(acc.whole, b.scope)
		return
	}
	for wi, word := range alive {
		for word != 0 {
			i := wi<<6 | bits.TrailingZeros64(word)
			word &= word - 1
			if rest := b.plan.residual[i]; rest != nil {
				w.work.Tested++
				if !rest.match(in) {
					continue
				}
			}
			acc.add(b.point, idx.rules[b.rules[i]].entry)
		}
	}
}
