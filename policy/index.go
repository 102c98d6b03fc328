package policy

import "slices"

// ruleIndex finds the rules of one contribution point that can match an
// input without testing them all, as OPA's rule index does: each rule is
// filed under one equality (or set membership) condition on one field, so
// a decision costs a map lookup per indexed field plus the candidates.
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
	scan  []int32
}

type keyedRules struct {
	field   *field
	byValue map[valueKey][]int32
}

// keyCandidate is one condition a rule could be filed under: cond[at].
type keyCandidate struct {
	field  *field
	values []valueKey
	at     int
}

func buildIndex(rules []nativeRule) *ruleIndex {
	idx := &ruleIndex{rules: rules, tests: make([]allOf, len(rules))}
	distinct := distinctValues(rules)
	byField := map[*field]*keyedRules{}
	for i, r := range rules {
		best, ok := bestKey(r.cond, distinct)
		if !ok {
			idx.scan = append(idx.scan, int32(i))
			idx.tests[i] = r.cond
			continue
		}
		idx.tests[i] = slices.Delete(slices.Clone(r.cond), best.at, best.at+1)
		k := byField[best.field]
		if k == nil {
			k = &keyedRules{field: best.field, byValue: map[valueKey][]int32{}}
			byField[best.field] = k
		}
		for _, v := range best.values {
			k.byValue[v] = append(k.byValue[v], int32(i))
		}
	}
	for _, k := range byField {
		idx.keyed = append(idx.keyed, *k)
	}
	return idx
}

// keyCandidates lists a condition's top-level equalities and memberships.
func keyCandidates(cond allOf) []keyCandidate {
	var out []keyCandidate
	for at, c := range cond {
		switch m := c.(type) {
		case compare:
			if m.op == opEq {
				out = append(out, keyCandidate{field: m.f, values: []valueKey{m.want.key()}, at: at})
			}
		case memberOf:
			values := make([]valueKey, 0, len(m.set))
			for v := range m.set {
				values = append(values, v)
			}
			out = append(out, keyCandidate{field: m.f, values: values, at: at})
		}
	}
	return out
}

// distinctValues counts, per field, the distinct key values rules test it
// against: the more, the more a lookup on that field prunes.
func distinctValues(rules []nativeRule) map[*field]int {
	seen := map[*field]map[valueKey]bool{}
	for _, r := range rules {
		for _, c := range keyCandidates(r.cond) {
			if seen[c.field] == nil {
				seen[c.field] = map[valueKey]bool{}
			}
			for _, v := range c.values {
				seen[c.field][v] = true
			}
		}
	}
	out := make(map[*field]int, len(seen))
	for f, vs := range seen {
		out[f] = len(vs)
	}
	return out
}

// bestKey picks the rule's candidate on the most selective field; a
// membership in many values is penalised by its size.
func bestKey(cond allOf, distinct map[*field]int) (keyCandidate, bool) {
	var best keyCandidate
	bestScore := 0
	for _, c := range keyCandidates(cond) {
		score := distinct[c.field] / len(c.values)
		if score > bestScore {
			best, bestScore = c, score
		}
	}
	return best, bestScore > 0
}

// matches adds to acc, as point pt, every rule whose condition holds for in.
func (idx *ruleIndex) matches(in *Input, pt int, acc *accumulator) {
	for i := range idx.keyed {
		for _, r := range idx.keyed[i].lookup(in) {
			idx.test(r, in, pt, acc)
		}
	}
	for _, r := range idx.scan {
		idx.test(r, in, pt, acc)
	}
}

// lookup is the rules filed under in's value of the field.
func (k *keyedRules) lookup(in *Input) []int32 {
	v, ok := k.field.get(in)
	if !ok || v.kind == kindComposite {
		return nil
	}
	return k.byValue[v.key()]
}

// candidates counts the rules matches tests for in (benchmarks report it).
func (idx *ruleIndex) candidates(in *Input) int {
	n := len(idx.scan)
	for i := range idx.keyed {
		n += len(idx.keyed[i].lookup(in))
	}
	return n
}

func (idx *ruleIndex) test(r int32, in *Input, pt int, acc *accumulator) {
	if idx.tests[r].match(in) {
		acc.add(pt, idx.rules[r].entry)
	}
}
