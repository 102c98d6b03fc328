package policy

import (
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// matcher is one lowered condition of a Rego rule body, evaluated on the
// Go input with Rego's semantics: a condition over an absent field fails.
type matcher interface {
	match(in *Input) bool
}

type (
	allOf    []matcher
	anyOf    []matcher
	not      struct{ m matcher }
	constant bool
	// defined holds when the field exists (a body's `x := input.a.b`).
	defined struct{ f *field }
	// truthy holds when the field exists and is not false (a bare `input.a`).
	truthy struct{ f *field }
	// compare holds when the field exists and `field op want` in Rego's order.
	compare struct {
		f    *field
		op   compareOp
		want value
	}
	// memberOf holds when the field's scalar value is in a constant collection.
	memberOf struct {
		f   *field
		set keySet
	}
	// holds holds when the field is a collection containing want.
	holds struct {
		f    *field
		want value
	}
	// stringTest applies a string builtin with a constant argument:
	// startswith, endswith or contains(field, arg).
	stringTest struct {
		f   *field
		op  stringOp
		arg string
	}
	// cidrContains is net.cidr_contains(constant CIDR, field).
	cidrContains struct {
		f      *field
		prefix netip.Prefix
	}
	regexMatch struct {
		f  *field
		re *regexp.Regexp
	}
)

type compareOp uint8

type stringOp uint8

const (
	opPrefix stringOp = iota
	opSuffix
	opContains
)

func (op stringOp) test(s, arg string) bool {
	switch op {
	case opPrefix:
		return strings.HasPrefix(s, arg)
	case opSuffix:
		return strings.HasSuffix(s, arg)
	}
	return strings.Contains(s, arg)
}

const (
	opEq compareOp = iota
	opNeq
	opLt
	opLte
	opGt
	opGte
)

func (m allOf) match(in *Input) bool {
	for _, c := range m {
		if !c.match(in) {
			return false
		}
	}
	return true
}

func (m anyOf) match(in *Input) bool {
	for _, c := range m {
		if c.match(in) {
			return true
		}
	}
	return false
}

func (m not) match(in *Input) bool   { return !m.m.match(in) }
func (m constant) match(*Input) bool { return bool(m) }

// leaf is a condition on one field's value. match reads the field from
// the input; check tests a value directly, which is how a condition on
// the elements of a collection (`some x in input.a; startswith(x, "p")`)
// tests each element.
type leaf interface {
	matcher
	field() *field
	check(v value, ok bool) bool
}

var (
	_ leaf = defined{}
	_ leaf = truthy{}
	_ leaf = compare{}
	_ leaf = holds{}
	_ leaf = regexMatch{}
	_ leaf = memberOf{}
	_ leaf = stringTest{}
	_ leaf = cidrContains{}
)

func (m defined) match(in *Input) bool      { return m.check(m.f.get(in)) }
func (m truthy) match(in *Input) bool       { return m.check(m.f.get(in)) }
func (m compare) match(in *Input) bool      { return m.check(m.f.get(in)) }
func (m holds) match(in *Input) bool        { return m.check(m.f.get(in)) }
func (m regexMatch) match(in *Input) bool   { return m.check(m.f.get(in)) }
func (m memberOf) match(in *Input) bool     { return m.check(m.f.get(in)) }
func (m stringTest) match(in *Input) bool   { return m.check(m.f.get(in)) }
func (m cidrContains) match(in *Input) bool { return m.check(m.f.get(in)) }

func (m defined) field() *field      { return m.f }
func (m truthy) field() *field       { return m.f }
func (m compare) field() *field      { return m.f }
func (m holds) field() *field        { return m.f }
func (m regexMatch) field() *field   { return m.f }
func (m memberOf) field() *field     { return m.f }
func (m stringTest) field() *field   { return m.f }
func (m cidrContains) field() *field { return m.f }

func (m defined) check(_ value, ok bool) bool { return ok }
func (m truthy) check(v value, ok bool) bool  { return ok && (v.kind != kindBool || v.b) }
func (m compare) check(v value, ok bool) bool { return ok && m.op.holds(compareValues(v, m.want)) }
func (m holds) check(v value, ok bool) bool   { return ok && collectionHas(v, m.want) }

func (m regexMatch) check(v value, ok bool) bool {
	return ok && v.kind == kindString && m.re.MatchString(v.s)
}

func (m memberOf) check(v value, ok bool) bool {
	if !ok || v.kind == kindComposite {
		return false
	}
	return m.set.has(v.key())
}

func (m stringTest) check(v value, ok bool) bool {
	return ok && v.kind == kindString && m.op.test(v.s, m.arg)
}

func (m cidrContains) check(v value, ok bool) bool {
	if !ok || v.kind != kindString {
		return false
	}
	if addr, err := netip.ParseAddr(v.s); err == nil {
		return m.prefix.Contains(addr.Unmap())
	}
	p, err := netip.ParsePrefix(v.s)
	return err == nil && p.Bits() >= m.prefix.Bits() && m.prefix.Contains(p.Addr().Unmap())
}

// someElement holds when some element of a collection field (the values
// of an array, set or object) passes every test: Rego's
// `some x in input.a; cond1(x); cond2(x)`, lowered to `x = input.a[_]`.
type someElement struct{ g *elementGroup }

// elementGroup collects the conditions a body puts on one element
// variable, filled while the rest of the body is lowered.
type elementGroup struct {
	coll  *field
	elem  *field // the variable's stand-in; its getter is never called
	tests []elementTest
}

type elementTest struct {
	l       leaf
	negated bool
}

func (m someElement) match(in *Input) bool {
	v, ok := m.g.coll.get(in)
	if !ok || v.kind != kindComposite {
		return false
	}
	found := false
	eachElement(v.c, func(e value) bool {
		found = m.g.passes(e)
		return !found
	})
	return found
}

func (g *elementGroup) passes(e value) bool {
	for _, t := range g.tests {
		if t.l.check(e, true) == t.negated {
			return false
		}
	}
	return true
}

// eachElement calls f on every element of a decoded collection until f
// returns false.
func eachElement(c any, f func(value) bool) {
	switch x := c.(type) {
	case []string:
		for _, s := range x {
			if !f(stringValue(s)) {
				return
			}
		}
	case map[string]string:
		for _, s := range x {
			if !f(stringValue(s)) {
				return
			}
		}
	case []any:
		for _, e := range x {
			if v, ok := goValue(e); ok && !f(v) {
				return
			}
		}
	case map[string]any:
		for _, e := range x {
			if v, ok := goValue(e); ok && !f(v) {
				return
			}
		}
	}
}

func (op compareOp) holds(cmp int) bool {
	switch op {
	case opEq:
		return cmp == 0
	case opNeq:
		return cmp != 0
	case opLt:
		return cmp < 0
	case opLte:
		return cmp <= 0
	case opGt:
		return cmp > 0
	}
	return cmp >= 0
}

// flip returns the operator for swapped operands (`3 < x` is `x > 3`).
func (op compareOp) flip() compareOp {
	switch op {
	case opLt:
		return opGt
	case opLte:
		return opGte
	case opGt:
		return opLt
	case opGte:
		return opLte
	}
	return op
}

// valueKey is the comparable form of a scalar value, for sets and indexes.
type valueKey struct {
	kind kind
	b    bool
	n    float64
	s    string
}

func (v value) key() valueKey { return valueKey{kind: v.kind, b: v.b, n: v.n, s: v.s} }

// keySet is a constant collection's scalar values, as membership tests
// them. Most are a policy's few principals, ports or methods, held as a
// sorted slice (a map of two keys takes five times the memory, and a set
// of 10,000 policies holds about 20,000 of them); a larger one is a map.
type keySet struct {
	few  []valueKey // sorted, when there are at most smallKeySet
	many map[valueKey]struct{}
}

const smallKeySet = 8

// newKeySet makes the set of keys (in any order, repeats allowed), which
// it sorts in place.
func newKeySet(keys []valueKey) keySet {
	slices.SortFunc(keys, compareKeys)
	keys = slices.Compact(keys)
	if len(keys) <= smallKeySet {
		return keySet{few: slices.Clone(keys)}
	}
	many := make(map[valueKey]struct{}, len(keys))
	for _, k := range keys {
		many[k] = struct{}{}
	}
	return keySet{many: many}
}

func (s keySet) has(k valueKey) bool {
	if s.many != nil {
		_, ok := s.many[k]
		return ok
	}
	return slices.Contains(s.few, k)
}

func (s keySet) len() int { return len(s.few) + len(s.many) }

// sorted is the set's keys in compareKeys order: the set's own slice
// when it is small, which callers must not change.
func (s keySet) sorted() []valueKey {
	if s.many == nil {
		return slices.Clip(s.few)
	}
	return slices.SortedFunc(maps.Keys(s.many), compareKeys)
}

// compareValues orders two values as ast.Compare does. The lowering only
// admits scalar constants, so at most one side is composite, and composites
// order after every scalar.
func compareValues(a, b value) int {
	if a.kind != b.kind {
		if a.kind < b.kind {
			return -1
		}
		return 1
	}
	switch a.kind {
	case kindBool:
		switch {
		case a.b == b.b:
			return 0
		case !a.b:
			return -1
		}
		return 1
	case kindNumber:
		switch {
		case a.n < b.n:
			return -1
		case a.n > b.n:
			return 1
		}
		return 0
	case kindString:
		return strings.Compare(a.s, b.s)
	}
	return 0 // null, or two composites: the lowering never compares those
}

// collectionHas reports whether a composite value holds want among its
// elements (arrays, sets) or values (objects), as Rego's `want in coll`.
func collectionHas(coll value, want value) bool {
	if coll.kind != kindComposite {
		return false
	}
	switch c := coll.c.(type) {
	case []string:
		if want.kind != kindString {
			return false
		}
		for _, s := range c {
			if s == want.s {
				return true
			}
		}
	case map[string]string:
		if want.kind != kindString {
			return false
		}
		for _, s := range c {
			if s == want.s {
				return true
			}
		}
	case []any:
		for _, e := range c {
			if ev, ok := goValue(e); ok && ev.kind != kindComposite && compareValues(ev, want) == 0 {
				return true
			}
		}
	case map[string]any:
		for _, e := range c {
			if ev, ok := goValue(e); ok && ev.kind != kindComposite && compareValues(ev, want) == 0 {
				return true
			}
		}
	}
	return false
}
