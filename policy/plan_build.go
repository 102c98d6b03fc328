package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// newBucket files rules (ascending) of idx as a bucket of point, with a
// plan when it has enough rules and they share fields a lookup can decide.
func newBucket(idx *ruleIndex, point int, rules []int32) *bucket {
	b := &bucket{idx: idx, point: point, rules: rules}
	if len(rules) >= planMinRules {
		b.plan = planBucket(rules, idx.tests)
	}
	if b.plan != nil && point == pointAllowScope {
		b.scope = newWholeScope(idx, b)
	}
	return b
}

// newWholeScope summarises an allow_scope bucket for when all its rules
// hold; nil when some rule contributes a dry-run entry or keeps residual
// conditions (then its rules are added one by one).
func newWholeScope(idx *ruleIndex, b *bucket) *wholeScope {
	ws := &wholeScope{}
	for i, r := range b.rules {
		e := idx.rules[r].entry
		if e.dryRun || b.plan.residual[i] != nil {
			return nil
		}
		ws.entries = append(ws.entries, e)
	}
	slices.SortStableFunc(ws.entries, byRank)
	ws.reason = selectingReason(ws.entries)
	return ws
}

// planBucket builds the plan of a bucket; nil when no condition of its
// rules can be decided by a lookup, and some are left (a bucket whose
// rules have no condition left has a plan without groups: all hold).
func planBucket(rules []int32, tests []allOf) *bucketPlan {
	n := len(rules)
	p := &bucketPlan{words: (n + 63) / 64, residual: make([]allOf, n)}
	p.full = make([]uint64, p.words)
	for i := range n {
		p.full[i>>6] |= 1 << (i & 63)
	}
	var common map[string]bool
	p.common, common = commonConditions(rules, tests)
	builders := map[*field]*groupBuilder{}
	var order []*field
	for i, r := range rules {
		var residual allOf
		for _, m := range tests[r] {
			c, ok := lookupCondition(m)
			if !ok {
				residual = append(residual, m)
				continue
			}
			if _, shared := common[c.key()]; shared {
				continue
			}
			g := builders[c.f]
			if g == nil {
				g = newGroupBuilder(c.f, p.words)
				builders[c.f] = g
				order = append(order, c.f)
			}
			if !g.add(int32(i), c) {
				residual = append(residual, m)
			}
		}
		p.residual[i] = residual
	}
	if len(builders) == 0 && len(common) == 0 && slices.ContainsFunc(p.residual, func(c allOf) bool { return c != nil }) {
		return nil
	}
	for _, f := range order {
		p.groups = append(p.groups, builders[f].build(p.full))
	}
	// The most discriminating group first (the one whose most shared
	// entry concerns the fewest rules): it is the likeliest to leave few
	// rules alive for the others.
	slices.SortStableFunc(p.groups, func(a, b *fieldGroup) int { return cmp.Compare(a.share, b.share) })
	return p
}

// commonConditions are the lookup conditions every rule of the bucket
// has, in the order the first rule has them, with their keys: decided
// once, with no lookup.
func commonConditions(rules []int32, tests []allOf) (allOf, map[string]bool) {
	count := map[string]int{}
	for _, r := range rules {
		seen := map[string]bool{}
		for _, m := range tests[r] {
			if c, ok := lookupCondition(m); ok && !seen[c.key()] {
				seen[c.key()] = true
				count[c.key()]++
			}
		}
	}
	var out allOf
	keys := map[string]bool{}
	for _, m := range tests[rules[0]] {
		if c, ok := lookupCondition(m); ok && count[c.key()] == len(rules) && !keys[c.key()] {
			keys[c.key()] = true
			out = append(out, m)
		}
	}
	slices.SortStableFunc(out, func(a, b matcher) int { return cmp.Compare(cost(a), cost(b)) })
	return out, keys
}

// cost ranks conditions by what testing them takes, so the cheap ones
// are tested first: a comparison of a plain field, then a string test or
// a map read (labels, headers, sets), then a CIDR (the address is parsed).
func cost(m matcher) int {
	switch x := m.(type) {
	case not:
		return cost(x.m)
	case anyOf:
		n := 0
		for _, b := range x {
			n += cost(b)
		}
		return n
	case allOf:
		n := 0
		for _, c := range x {
			n += cost(c)
		}
		return n
	case cidrContains:
		return 4
	case memberOf, stringTest:
		return 2 + mapField(x.(leaf).field())
	case leaf:
		return 1 + mapField(x.field())
	}
	return 4
}

// mapField is 1 for a field read from a map (labels, headers, claims).
func mapField(f *field) int {
	if strings.Contains(f.path, ".labels.") || strings.Contains(f.path, ".headers.") || strings.Contains(f.path, ".claims.") {
		return 1
	}
	return 0
}

// key identifies a lookup condition: equal keys, equal conditions.
func (c lookupCond) key() string {
	entries := make([]string, len(c.entries))
	for i, e := range c.entries {
		switch e.kind {
		case entryExact:
			entries[i] = fmt.Sprintf("=%d/%t/%v/%q", e.key.kind, e.key.b, e.key.n, e.key.s)
		case entryPrefix:
			entries[i] = fmt.Sprintf("^%q", e.text)
		case entrySuffix:
			entries[i] = fmt.Sprintf("$%q", e.text)
		case entryCIDR:
			entries[i] = "/" + e.prefix.String()
		}
	}
	slices.Sort(entries)
	return fmt.Sprintf("%s neg=%t def=%t %s", c.f.path, c.negated, c.defined, strings.Join(entries, " "))
}

// lookupCond is a condition a fieldGroup can decide: positive (any entry
// holding makes it hold), negated (every entry must fail), or only the
// requirement that the field be defined, which != and truthiness add.
type lookupCond struct {
	f       *field
	entries []lookupEntry
	negated bool
	defined bool // the field must be defined
}

// lookupEntry is one value index entry: exactly one of its fields is set
// by kind.
type lookupEntry struct {
	kind   entryKind
	key    valueKey     // entryExact
	text   string       // entryPrefix, entrySuffix
	prefix netip.Prefix // entryCIDR, masked
}

type entryKind uint8

const (
	entryExact entryKind = iota
	entryPrefix
	entrySuffix
	entryCIDR
)

var falseKey = value{kind: kindBool}.key()

// lookupCondition classifies a matcher: what a lookup decides, or false
// for a condition left to the residual.
func lookupCondition(m matcher) (lookupCond, bool) {
	switch x := m.(type) {
	case compare:
		switch x.op {
		case opEq:
			return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryExact, key: x.want.key()}}}, true
		case opNeq:
			// x != want: defined, and not equal (in Rego's order, unequal
			// kinds are unequal, composites included).
			return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryExact, key: x.want.key()}}, negated: true, defined: true}, true
		}
	case truthy:
		// defined and not false
		return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryExact, key: falseKey}}, negated: true, defined: true}, true
	case defined:
		return lookupCond{f: x.f, defined: true}, true
	case not:
		if c, ok := positiveEntries(x.m); ok {
			c.negated = true
			return c, true
		}
	default:
		return positiveEntries(m)
	}
	return lookupCond{}, false
}

// positiveEntries classifies a condition that holds when the field's
// value is found in a value index: an equality, a membership, a prefix, a
// suffix, a CIDR, or an OR of those on one field (a helper rule's bodies).
func positiveEntries(m matcher) (lookupCond, bool) {
	switch x := m.(type) {
	case compare:
		if x.op == opEq {
			return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryExact, key: x.want.key()}}}, true
		}
	case memberOf:
		c := lookupCond{f: x.f}
		for _, k := range x.set.sorted() {
			c.entries = append(c.entries, lookupEntry{kind: entryExact, key: k})
		}
		return c, len(c.entries) > 0
	case stringTest:
		switch x.op {
		case opPrefix:
			return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryPrefix, text: x.arg}}}, true
		case opSuffix:
			return lookupCond{f: x.f, entries: []lookupEntry{{kind: entrySuffix, text: x.arg}}}, true
		}
	case cidrContains:
		return lookupCond{f: x.f, entries: []lookupEntry{{kind: entryCIDR, prefix: x.prefix}}}, true
	case allOf:
		if len(x) == 1 {
			return positiveEntries(x[0])
		}
	case anyOf:
		var c lookupCond
		for _, branch := range x {
			b, ok := positiveEntries(branch)
			if !ok || c.f != nil && b.f != c.f {
				return lookupCond{}, false
			}
			c.f = b.f
			c.entries = append(c.entries, b.entries...)
		}
		return c, c.f != nil
	}
	return lookupCond{}, false
}

// groupBuilder gathers a fieldGroup's conditions, rule by rule.
type groupBuilder struct {
	f       *field
	entries map[lookupEntry]*hitBuilder
	pos     []uint64 // rules with a positive condition
	def     []uint64 // rules requiring the field defined
}

type hitBuilder struct{ pos, neg []int32 }

func newGroupBuilder(f *field, words int) *groupBuilder {
	return &groupBuilder{f: f, entries: map[lookupEntry]*hitBuilder{}, pos: make([]uint64, words), def: make([]uint64, words)}
}

// add files rule i's condition c, or reports false when the rule already
// has a positive condition here (a group decides one per rule: the
// second is left to the residual).
func (g *groupBuilder) add(i int32, c lookupCond) bool {
	bit, w := uint64(1)<<(i&63), i>>6
	if !c.negated && len(c.entries) > 0 {
		if g.pos[w]&bit != 0 {
			return false
		}
		g.pos[w] |= bit
	}
	if c.defined {
		g.def[w] |= bit
	}
	for _, e := range c.entries {
		h := g.entries[e]
		if h == nil {
			h = &hitBuilder{}
			g.entries[e] = h
		}
		list := &h.pos
		if c.negated {
			list = &h.neg
		}
		if n := len(*list); n == 0 || (*list)[n-1] != i {
			*list = append(*list, i)
		}
	}
	return true
}

func (g *groupBuilder) build(full []uint64) *fieldGroup {
	words := len(full)
	fg := &fieldGroup{f: g.f, notPos: make([]uint64, words), undefined: make([]uint64, words)}
	for i := range full {
		fg.notPos[i] = full[i] &^ g.pos[i]
		fg.undefined[i] = full[i] &^ (g.pos[i] | g.def[i])
	}
	var prefixes, suffixes map[string]*hit
	for e, hb := range g.entries {
		h := &hit{pos: newRuleSet(hb.pos, words), neg: newRuleSet(hb.neg, words)}
		fg.share = max(fg.share, len(hb.pos)+len(hb.neg))
		switch e.kind {
		case entryExact:
			fg.exact.put(e.key, h)
		case entryPrefix:
			prefixes = addText(prefixes, e.text, h)
		case entrySuffix:
			suffixes = addText(suffixes, e.text, h)
		case entryCIDR:
			if fg.cidr.byPrefix == nil {
				fg.cidr.byPrefix = map[netip.Prefix]*hit{}
			}
			fg.cidr.byPrefix[e.prefix] = h
			if e.prefix.Addr().Is4() {
				fg.cidr.bits4 = append(fg.cidr.bits4, e.prefix.Bits())
			} else {
				fg.cidr.bits6 = append(fg.cidr.bits6, e.prefix.Bits())
			}
		}
	}
	fg.prefix = newAffixTable(prefixes)
	fg.suffix = newAffixTable(suffixes)
	fg.cidr.bits4 = sortedUnique(fg.cidr.bits4)
	fg.cidr.bits6 = sortedUnique(fg.cidr.bits6)
	return fg
}

func addText(m map[string]*hit, text string, h *hit) map[string]*hit {
	if m == nil {
		m = map[string]*hit{}
	}
	m[text] = h
	return m
}

func newAffixTable(byText map[string]*hit) affixTable {
	t := affixTable{byText: byText}
	for s := range byText {
		t.lengths = append(t.lengths, len(s))
	}
	t.lengths = sortedUnique(t.lengths)
	return t
}

func sortedUnique(xs []int) []int {
	slices.Sort(xs)
	return slices.Compact(xs)
}

// newRuleSet keeps rules (ascending) dense when they are at least as many
// as the words a dense set takes.
func newRuleSet(rules []int32, words int) ruleSet {
	switch {
	case len(rules) == 0:
		return ruleSet{}
	case len(rules) < words:
		return ruleSet{sparse: rules}
	}
	dense := make([]uint64, words)
	for _, r := range rules {
		dense[r>>6] |= 1 << (r & 63)
	}
	return ruleSet{dense: dense}
}
