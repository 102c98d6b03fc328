package policy

import "net/netip"

// bucket is the rules one index lookup hands over (or the index's scan
// list). A bucket of planMinRules rules or more is decided by a plan:
// the conditions its rules put on each input field are looked up once per
// decision for all of them, instead of once per rule.
type bucket struct {
	idx   *ruleIndex
	point int
	rules []int32     // into idx.rules, ascending
	plan  *bucketPlan // nil: the rules are tested one by one
	// scope stands for every rule of an allow_scope bucket when all hold.
	scope *wholeScope
}

// wholeScope is what an allow_scope bucket contributes when every rule in
// it holds (as for every decision on a workload many ALLOWs select): its
// enforced entries, by rank, and the reason a verdict gives when they are
// the only selecting policies, built once.
type wholeScope struct {
	entries []*entry
	reason  string
}

// planMinRules is the smallest bucket worth a plan: below it, testing the
// rules one by one costs about what the plan's lookups do.
const planMinRules = 4

// bucketPlan decides the rules of one bucket together. Each fieldGroup
// holds every condition the rules put on one input field that a value
// index can decide (equality and `in`, startswith, endswith,
// net.cidr_contains, their negations, != and truthiness): one read of the
// field and a few map lookups give the set of rules whose conditions on
// that field hold, as a bitset over the bucket's rules. A rule that
// survives every group is then tested on its residual conditions, the
// ones no group decides.
//
// Invariant: for rule i of the bucket, its test (the rule's condition
// less the index key) holds exactly when every group passes i and
// residual[i] holds; each condition is in exactly one group or in the
// residual, and a group decides its conditions with the matchers'
// semantics (TestPlanAgreesWithMatchers holds it to that).
type bucketPlan struct {
	words int
	full  []uint64 // every rule of the bucket
	// common are the conditions every rule has: tested once, first.
	common   allOf
	groups   []*fieldGroup
	residual []allOf // per rule; nil when no condition is left
}

// fieldGroup decides the conditions on one field. Each rule has at most
// one positive condition in a group (an equality, a membership, a prefix,
// or an OR of such on the field: any of its entries holding makes it
// hold), any number of negated ones (each entry holding fails the rule),
// and may require the field to be defined (!=, truthiness, a binding).
type fieldGroup struct {
	f      *field
	exact  valueMap[*hit]
	prefix affixTable
	suffix affixTable
	cidr   cidrTable
	// notPos are the rules without a positive condition here; undefined
	// are the rules that pass when the field is absent (no positive
	// condition, no requirement that it be defined).
	notPos, undefined []uint64
	// share is how many rules the entry concerning the most rules
	// concerns: the fewer, the more the group discriminates.
	share int
}

// hit is the rules a lookup entry concerns: pos holds the entry in a
// positive condition, neg in a negated one.
type hit struct{ pos, neg ruleSet }

// ruleSet is a set of bucket rules, dense when that costs no more than
// listing them.
type ruleSet struct {
	dense  []uint64
	sparse []int32
}

// affixTable finds the prefixes (or suffixes) of a string among a set:
// one map lookup per distinct length.
type affixTable struct {
	lengths []int // ascending
	byText  map[string]*hit
}

// cidrTable finds the CIDRs containing an address: one map lookup per
// distinct prefix length of the address's family.
type cidrTable struct {
	bits4, bits6 []int // ascending
	byPrefix     map[netip.Prefix]*hit
}

// planWork is a decision's working memory for plans, kept in the pooled
// accumulator, and the count of what the decision did.
type planWork struct {
	alive, pos []uint64
	hits       []*hit
	work       Work
}

// Work is what the native program did for one decision.
type Work struct {
	// Candidates are the rules the index's lookups handed over.
	Candidates int `json:"candidates"`
	// Shared are the evaluations that decided conditions for many
	// candidates at once: a condition every candidate of a bucket has,
	// tested once, or a per-field lookup.
	Shared int `json:"shared"`
	// Tested are the candidates then tested one by one: rules of small
	// buckets, and survivors of the lookups with conditions left.
	Tested int `json:"tested"`
}

// survivors leaves in w.alive, and returns, the rules that pass every group.
func (p *bucketPlan) survivors(in *Input, w *planWork) []uint64 {
	alive := grow(&w.alive, p.words)
	for _, m := range p.common {
		w.work.Shared++
		if !m.match(in) {
			clear(alive)
			return alive
		}
	}
	copy(alive, p.full)
	for _, g := range p.groups {
		w.work.Shared++
		if !g.apply(in, alive, w) {
			return alive
		}
	}
	return alive
}

// apply intersects alive with the rules g passes for in, and reports
// whether any rule is left alive.
func (g *fieldGroup) apply(in *Input, alive []uint64, w *planWork) bool {
	v, ok := g.f.get(in)
	if !ok {
		return and(alive, g.undefined)
	}
	hits := g.lookup(v, w.hits[:0])
	w.hits = hits
	if len(hits) == 1 && hits[0].pos.dense != nil && hits[0].neg.sparse == nil {
		h := hits[0]
		any := uint64(0)
		for i := range alive {
			alive[i] &= g.notPos[i] | h.pos.dense[i]
			if h.neg.dense != nil {
				alive[i] &^= h.neg.dense[i]
			}
			any |= alive[i]
		}
		return any != 0
	}
	pos := grow(&w.pos, len(alive))
	clear(pos)
	for _, h := range hits {
		h.pos.or(pos)
	}
	for i := range alive {
		alive[i] &= g.notPos[i] | pos[i]
	}
	for _, h := range hits {
		h.neg.remove(alive)
	}
	return !none(alive)
}

// lookup appends the hits of every entry v satisfies.
func (g *fieldGroup) lookup(v value, hits []*hit) []*hit {
	if v.kind == kindComposite {
		return hits
	}
	if h, _ := g.exact.get(v); h != nil {
		hits = append(hits, h)
	}
	if v.kind != kindString {
		return hits
	}
	s := v.s
	for _, n := range g.prefix.lengths {
		if n > len(s) {
			break
		}
		if h := g.prefix.byText[s[:n]]; h != nil {
			hits = append(hits, h)
		}
	}
	for _, n := range g.suffix.lengths {
		if n > len(s) {
			break
		}
		if h := g.suffix.byText[s[len(s)-n:]]; h != nil {
			hits = append(hits, h)
		}
	}
	if g.cidr.byPrefix != nil {
		hits = g.cidr.lookup(s, hits)
	}
	return hits
}

// lookup finds the CIDRs that net.cidr_contains(cidr, s) holds for, as
// cidrContains.check does: s an address, or a prefix at least as long.
func (t *cidrTable) lookup(s string, hits []*hit) []*hit {
	limit := 128
	addr, err := netip.ParseAddr(s)
	if err != nil {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return hits
		}
		addr, limit = p.Addr(), p.Bits()
	}
	addr = addr.Unmap()
	if addr.Zone() != "" {
		return hits // Prefix.Contains holds for no zoned address
	}
	lengths := t.bits6
	if addr.Is4() {
		lengths = t.bits4
	}
	for _, n := range lengths {
		if n > limit {
			break
		}
		p, err := addr.Prefix(n)
		if err != nil {
			break
		}
		if h := t.byPrefix[p]; h != nil {
			hits = append(hits, h)
		}
	}
	return hits
}

func (s ruleSet) or(dst []uint64) {
	if s.dense != nil {
		for i, w := range s.dense {
			dst[i] |= w
		}
		return
	}
	for _, r := range s.sparse {
		dst[r>>6] |= 1 << (r & 63)
	}
}

func (s ruleSet) remove(dst []uint64) {
	if s.dense != nil {
		for i, w := range s.dense {
			dst[i] &^= w
		}
		return
	}
	for _, r := range s.sparse {
		dst[r>>6] &^= 1 << (r & 63)
	}
}

// and intersects dst with s and reports whether anything is left.
func and(dst, s []uint64) bool {
	any := uint64(0)
	for i := range dst {
		dst[i] &= s[i]
		any |= dst[i]
	}
	return any != 0
}

func none(s []uint64) bool {
	for _, w := range s {
		if w != 0 {
			return false
		}
	}
	return true
}

// grow returns (*buf)[:n], reallocating only when it is too short.
func grow(buf *[]uint64, n int) []uint64 {
	if cap(*buf) < n {
		*buf = make([]uint64, n)
	}
	return (*buf)[:n]
}

// valueMap maps scalar values to T. Strings and numbers have maps of their
// own, so a lookup hashes one string or float64, not a whole valueKey.
type valueMap[T any] struct {
	strings map[string]T
	numbers map[float64]T
	others  map[valueKey]T // null, booleans
	size    int
}

func (m *valueMap[T]) get(v value) (T, bool) {
	var t T
	var ok bool
	switch v.kind {
	case kindString:
		t, ok = m.strings[v.s]
	case kindNumber:
		t, ok = m.numbers[v.n]
	case kindNull, kindBool:
		t, ok = m.others[v.key()]
	}
	return t, ok
}

func (m *valueMap[T]) put(k valueKey, t T) {
	switch k.kind {
	case kindString:
		if m.strings == nil {
			m.strings = map[string]T{}
		}
		m.strings[k.s] = t
	case kindNumber:
		if m.numbers == nil {
			m.numbers = map[float64]T{}
		}
		m.numbers[k.n] = t
	default:
		if m.others == nil {
			m.others = map[valueKey]T{}
		}
		m.others[k] = t
	}
	m.size++
}
