package istio

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// module writes one policy's Rego module. Helper rules are written after
// the contribution that first uses them, and shared: a helper with the
// same definitions as an earlier one is that one.
//
// Invariant: every helper is a boolean rule without arguments whose
// definitions are conjunctions of native-fragment conditions, so the
// engine inlines it (several definitions are an OR).
type module struct {
	b         strings.Builder
	byContent map[string]string // helper definitions -> helper name
	names     map[string]bool
	pending   map[string]string // helpers registered since the last flush, by name
}

func newModule() *module {
	return &module{byContent: map[string]string{}, names: map[string]bool{}}
}

func (m *module) comment(format string, args ...any) {
	for _, line := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		if line == "" {
			m.b.WriteString("#\n")
			continue
		}
		m.b.WriteString("# " + line + "\n")
	}
}

func (m *module) line(format string, args ...any) {
	fmt.Fprintf(&m.b, format+"\n", args...)
}

// rule writes `head if { body }`, on one line when the body is one
// short expression, as opa fmt leaves it.
func (m *module) rule(head string, body conj) {
	switch {
	case len(body) == 0:
		m.line("%s", head)
	case len(body) == 1 && len(head)+len(body[0]) < 100:
		m.line("%s if %s", head, body[0])
	default:
		m.line("%s if {", head)
		for _, e := range body {
			m.line("\t%s", e)
		}
		m.line("}")
	}
	m.line("")
}

// helper returns the name of a rule that holds when any of alts holds.
func (m *module) helper(name string, alts disj) string {
	key := fmt.Sprintf("%q", alts)
	if have, ok := m.byContent[key]; ok {
		return have
	}
	base := name
	for n := 2; m.names[name]; n++ {
		name = fmt.Sprintf("%s_%d", base, n)
	}
	m.names[name] = true
	m.byContent[key] = name
	defs := &module{}
	for _, c := range alts {
		defs.rule(name, c)
	}
	if m.pending == nil {
		m.pending = map[string]string{}
	}
	m.pending[name] = defs.b.String()
	return name
}

// require is the body part that holds when any of alts holds: the one
// alternative itself (so its equalities stay top-level conditions the
// engine can index), or a helper. An alternative that iterates stays in a
// helper, where its variable cannot meet another's.
func (m *module) require(name string, alts disj) conj {
	if len(alts) == 1 && !slices.ContainsFunc(alts[0], iterates) {
		return alts[0]
	}
	return conj{m.helper(name, alts)}
}

func iterates(e string) bool { return strings.HasPrefix(e, "some ") }

// exclude is the body part that holds when none of alts holds.
func (m *module) exclude(name string, alts disj) conj {
	if len(alts) == 1 && len(alts[0]) == 1 && negatable(alts[0][0]) {
		return conj{"not " + alts[0][0]}
	}
	return conj{"not " + m.helper(name, alts)}
}

// flush writes the helpers registered since the last flush, by name: a
// rule's clause helper ("rule0_from") before its parts ("rule0_from1_...").
func (m *module) flush() {
	for _, name := range slices.SortedFunc(maps.Keys(m.pending), naturalCompare) {
		m.b.WriteString(m.pending[name])
	}
	m.pending = nil
}

func (m *module) String() string {
	return strings.TrimRight(m.b.String(), "\n") + "\n"
}

// snake turns a field name into a helper name part: "notIpBlocks" -> "not_ip_blocks".
func snake(name string) string {
	var b strings.Builder
	for i, r := range name {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// naturalCompare orders names with numbers by value: "rule0_when2" before
// "rule0_when13".
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da != "" && db != "" {
			if c := cmp.Compare(len(strings.TrimLeft(da, "0")), len(strings.TrimLeft(db, "0"))); c != 0 {
				return c
			}
			if c := strings.Compare(strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")); c != 0 {
				return c
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}
