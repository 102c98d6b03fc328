package policy

import (
	"bytes"
	"encoding/json"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Reading the translator's Rego without OPA's parser (issue #15).
//
// After compiling (fragment.go), parsing is most of what a load of
// translated policies costs: OPA's parser is general, the translator's
// output is not. fastParse reads Rego v1 laid out as the translator lays
// it out, and refuses anything else, which OPA's parser then reads:
//
//	# comment lines, blank lines
//	package a.b["c"]
//	name if <expr>
//	name contains <object> if <expr>
//	name if {            (or name contains <object> if {)
//		<expr>           one per line, after one tab
//	}
//
// where <expr> is [not] <term> [(== | != | in) <term>] or [not]
// f.g(<term>, ...), and <term> a rule name, input.a.b["c"], a string
// ("..." without escapes, or `...`), an integer, true, false, or a set or
// object of those. Only ASCII, no carriage returns, no METADATA comments.
// TestFastParseEqualsOPA and FuzzFastParse hold it to OPA's parser: every
// module it accepts parses to what OPA's parser makes of it, in every
// exported field and location (but Tabs, which OPA aliases to its
// scanner's buffer).

// fastParse parses src as OPA's parser would (Rego v1, annotations
// processed), or reports false when src is not laid out as above.
func fastParse(file string, src []byte) (*ast.Module, bool) {
	return fastRead(file, src, false)
}

// fastCheck is fastParse for a reader that keeps the package path and
// the rules' names and drops the tree: it accepts what fastParse accepts
// and makes the same tree, but its terms other than refs share one
// location rather than each having its own (about a hundred per
// translated policy). Lowering reads no other term's location
// (TestFragmentLowersAsCompiled). Its trees are read only: a write
// through one term's location would move every term sharing it.
func fastCheck(file string, src []byte) (*ast.Module, bool) {
	return fastRead(file, src, true)
}

func fastRead(file string, src []byte, light bool) (*ast.Module, bool) {
	for _, c := range src {
		if c >= 0x80 || c == '\r' || c == 0 || c == '\v' || c == '\f' {
			return nil, false
		}
	}
	if bytes.Contains(src, []byte("METADATA")) {
		return nil, false // perhaps an annotation, whose YAML OPA's parser reads
	}
	r := &fastReader{file: file, src: src, row: 1, light: light}
	r.shared.File = file
	r.startLine()
	m, ok := r.module()
	if !ok {
		return nil, false
	}
	m.SetRegoVersion(ast.RegoV1)
	return m, true
}

type fastReader struct {
	file string
	src  []byte
	pos  int
	row  int
	// light: the terms share one location (shared), only the package,
	// the rules' heads, the expressions and the refs have their own
	// (fastCheck).
	light  bool
	shared ast.Location
	// lineStart is the offset of the current row's first byte, and
	// lineTabs the columns of the row's tabs.
	lineStart int
	lineTabs  []int
	// locs is where locations are allocated from, a slab at a time.
	locs []ast.Location
}

// loc is a term's location: its own, or the shared one when light.
func (r *fastReader) loc(start, end int) *ast.Location {
	if r.light {
		return &r.shared
	}
	return r.place(start, end)
}

// place is the location of src[start:end].
func (r *fastReader) place(start, end int) *ast.Location {
	if len(r.locs) == cap(r.locs) {
		n := 64
		if r.light {
			n = 16 // the package, the heads and the expressions: a few per rule
		}
		r.locs = make([]ast.Location, 0, n)
	}
	col := start - r.lineStart + 1
	tabs := r.lineTabs
	for len(tabs) > 0 && tabs[len(tabs)-1] >= col {
		tabs = tabs[:len(tabs)-1]
	}
	r.locs = append(r.locs, ast.Location{Text: r.src[start:end], File: r.file, Row: r.row, Col: col, Offset: start, Tabs: tabs[:len(tabs):len(tabs)]})
	return &r.locs[len(r.locs)-1]
}

// startLine notes where the row starting at r.pos has its tabs.
func (r *fastReader) startLine() {
	r.lineStart, r.lineTabs = r.pos, nil
	for i := r.pos; i < len(r.src) && r.src[i] != '\n'; i++ {
		if r.src[i] == '\t' {
			r.lineTabs = append(r.lineTabs, i-r.pos+1)
		}
	}
}

func (r *fastReader) eof() bool { return r.pos >= len(r.src) }

func (r *fastReader) peek() byte {
	if r.eof() {
		return 0
	}
	return r.src[r.pos]
}

func (r *fastReader) newline() bool {
	if r.peek() != '\n' {
		return false
	}
	r.pos++
	r.row++
	r.startLine()
	return true
}

// lit consumes s if the input continues with it.
func (r *fastReader) lit(s string) bool {
	if len(r.src)-r.pos < len(s) {
		return false
	}
	for i := range len(s) {
		if r.src[r.pos+i] != s[i] {
			return false
		}
	}
	r.pos += len(s)
	return true
}

func (r *fastReader) module() (*ast.Module, bool) {
	m := &ast.Module{}
	for {
		switch {
		case r.comment(m):
		case r.newline():
		case r.lit("package "):
			pkgLoc := r.place(r.pos-len("package "), r.pos-1)
			path, ok := r.packagePath()
			if !ok || !r.newline() {
				return nil, false
			}
			m.Package = &ast.Package{Path: path, Location: pkgLoc}
			return r.rules(m)
		default:
			return nil, false
		}
	}
}

// comment reads a line that is a comment; false if the line is not one.
func (r *fastReader) comment(m *ast.Module) bool {
	if r.peek() != '#' {
		return false
	}
	start := r.pos
	for !r.eof() && r.peek() != '\n' {
		r.pos++
	}
	c := ast.NewComment(r.src[start+1 : r.pos])
	c.SetLoc(r.loc(start, r.pos))
	m.Comments = append(m.Comments, c)
	return r.newline()
}

func (r *fastReader) ident() (int, int, bool) {
	start := r.pos
	for !r.eof() {
		c := r.peek()
		if c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || r.pos > start && '0' <= c && c <= '9' {
			r.pos++
			continue
		}
		break
	}
	return start, r.pos, r.pos > start
}

// packagePath reads a.b["c"]: data, then a string per part.
func (r *fastReader) packagePath() (ast.Ref, bool) {
	start, end, ok := r.ident()
	if !ok || reservedPackageHead(string(r.src[start:end])) {
		return nil, false
	}
	first := ast.StringTerm(string(r.src[start:end])).SetLocation(r.loc(start, end))
	path := ast.Ref{ast.NewTerm(ast.DefaultRootDocument.Value).SetLocation(r.loc(start, end)), first}
	for {
		part, ok := r.refPart()
		if !ok {
			return nil, false
		}
		if part == nil {
			return path, true
		}
		path = append(path, part)
	}
}

func reservedPackageHead(s string) bool {
	return s == "data" || s == "input" || reservedNames()[s]
}

// refPart reads .name or ["string"]; nil when neither follows.
func (r *fastReader) refPart() (*ast.Term, bool) {
	switch r.peek() {
	case '.':
		r.pos++
		start, end, ok := r.ident()
		if !ok {
			return nil, false
		}
		return ast.StringTerm(string(r.src[start:end])).SetLocation(r.loc(start, end)), true
	case '[':
		r.pos++
		t, ok := r.str()
		if !ok || !r.lit("]") {
			return nil, false
		}
		return t, true
	}
	return nil, true
}

// str reads "..." without escapes, or `...`.
func (r *fastReader) str() (*ast.Term, bool) {
	q := r.peek()
	if q != '"' && q != '`' {
		return nil, false
	}
	start := r.pos
	r.pos++
	for !r.eof() && r.peek() != q {
		if c := r.peek(); c == '\n' || c == '\\' && q == '"' || c < 0x20 && c != '\t' || q == '"' && c == '\t' {
			return nil, false
		}
		r.pos++
	}
	if r.eof() {
		return nil, false
	}
	r.pos++
	s := string(r.src[start+1 : r.pos-1])
	var t *ast.Term
	if q == '"' && s == "" {
		t = ast.NewTerm(ast.InternedEmptyStringValue)
	} else {
		t = ast.StringTerm(s)
	}
	return t.SetLocation(r.loc(start, r.pos)), true
}

func (r *fastReader) rules(m *ast.Module) (*ast.Module, bool) {
	for !r.eof() {
		switch {
		case r.comment(m):
		case r.newline():
		default:
			rule, ok := r.rule()
			if !ok {
				return nil, false
			}
			rule.Module = m
			m.Rules = append(m.Rules, rule)
		}
	}
	return m, r.pos == len(r.src)
}

// rule reads one rule and the newline after it.
func (r *fastReader) rule() (*ast.Rule, bool) {
	start, end, ok := r.ident()
	if !ok || !fragmentName(ast.Var(r.src[start:end])) {
		return nil, false
	}
	name := ast.Var(r.src[start:end])
	head := &ast.Head{Name: name, Reference: ast.Ref{ast.VarTerm(string(name)).SetLocation(r.loc(start, end))}}
	if r.lit(" contains ") {
		key, ok := r.term()
		if !ok || !constantTerm(key) {
			return nil, false
		}
		head.Key = key
	} else {
		head.Value = ast.BooleanTerm(true)
	}
	head.Location = r.place(start, r.pos)
	rule := &ast.Rule{Head: head}
	switch {
	case r.lit(" if {"):
		if !r.newline() {
			return nil, false
		}
		for !r.lit("}") {
			if !r.lit("\t") {
				return nil, false
			}
			e, ok := r.expr(len(rule.Body))
			if !ok || !r.newline() {
				return nil, false
			}
			rule.Body = append(rule.Body, e)
		}
		if len(rule.Body) == 0 {
			return nil, false
		}
	case r.lit(" if "):
		e, ok := r.expr(0)
		if !ok {
			return nil, false
		}
		rule.Body = ast.Body{e}
	default:
		return nil, false
	}
	rule.Location = &ast.Location{Text: r.src[start:r.pos], File: r.file, Row: head.Location.Row, Col: 1, Offset: start, Tabs: head.Location.Tabs}
	if start != head.Location.Offset || head.Location.Col != 1 {
		return nil, false
	}
	return rule, r.eof() || r.newline()
}

// infix maps an infix operator to its builtin's ref parts.
var infix = map[string][]string{"==": {"equal"}, "!=": {"neq"}, "in": {"internal", "member_2"}}

// expr reads one expression, up to the end of its line.
func (r *fastReader) expr(index int) (*ast.Expr, bool) {
	start := r.pos
	negated := r.lit("not ")
	if negated && r.peek() == ' ' {
		return nil, false
	}
	lhs, ok := r.term()
	if !ok {
		return nil, false
	}
	e := &ast.Expr{Index: index, Negated: negated}
	if call, isCall := lhs.Value.(ast.Call); isCall {
		e.Terms = []*ast.Term(call)
	} else if r.peek() == ' ' {
		r.pos++
		opStart := r.pos
		for !r.eof() && r.peek() != ' ' && r.peek() != '\n' {
			r.pos++
		}
		parts, ok := infix[string(r.src[opStart:r.pos])]
		if !ok || !r.lit(" ") {
			return nil, false
		}
		opEnd := r.pos - 1
		rhs, ok := r.term()
		if !ok {
			return nil, false
		}
		op := ast.Ref{ast.VarTerm(parts[0]).SetLocation(r.loc(opStart, opEnd))}
		for _, p := range parts[1:] {
			op = append(op, ast.StringTerm(p).SetLocation(r.loc(opStart, opEnd)))
		}
		e.Terms = []*ast.Term{ast.NewTerm(op).SetLocation(r.loc(opStart, opEnd)), lhs, rhs}
	} else {
		e.Terms = lhs
	}
	if c := r.peek(); c != '\n' && c != 0 {
		return nil, false
	}
	e.Location = r.place(start, r.pos)
	return e, true
}

// term reads a term: a call's terms come back as an ast.Call.
func (r *fastReader) term() (*ast.Term, bool) {
	start := r.pos
	switch c := r.peek(); {
	case c == '"' || c == '`':
		return r.str()
	case '0' <= c && c <= '9':
		for !r.eof() && '0' <= r.peek() && r.peek() <= '9' {
			r.pos++
		}
		lit := string(r.src[start:r.pos])
		if len(lit) > 1 && lit[0] == '0' || len(lit) > 15 {
			return nil, false
		}
		return ast.NumberTerm(json.Number(lit)).SetLocation(r.loc(start, r.pos)), true
	case c == '{':
		return r.collection()
	}
	s, e, ok := r.ident()
	if !ok {
		return nil, false
	}
	name := string(r.src[s:e])
	switch name {
	case "true", "false":
		return ast.BooleanTerm(name == "true").SetLocation(r.loc(s, e)), true
	case "null", "not", "some", "every", "with", "as", "if", "contains", "in", "else", "default", "import", "package", "data":
		return nil, false
	}
	head := ast.VarTerm(name).SetLocation(r.loc(s, e))
	if r.peek() != '.' && r.peek() != '[' && r.peek() != '(' {
		if name == "input" {
			return nil, false // OPA reads a root document as a ref
		}
		return head, true
	}
	ref := ast.Ref{head}
	for {
		part, ok := r.refPart()
		if !ok {
			return nil, false
		}
		if part == nil {
			break
		}
		ref = append(ref, part)
	}
	// Its own location even when light: fragmentCompile binds a ref
	// passed to a builtin to a local at the ref's location, which an
	// explanation shows.
	refTerm := ast.NewTerm(ref).SetLocation(r.place(start, r.pos))
	if r.peek() != '(' {
		if name != "input" {
			return nil, false
		}
		return refTerm, true
	}
	if ast.BuiltinMap[ref.String()] == nil {
		return nil, false
	}
	r.pos++
	call := ast.Call{refTerm}
	for {
		arg, ok := r.term()
		if !ok {
			return nil, false
		}
		if _, nested := arg.Value.(ast.Call); nested {
			return nil, false
		}
		call = append(call, arg)
		if r.lit(")") {
			break
		}
		if !r.lit(", ") {
			return nil, false
		}
	}
	return ast.NewTerm(call).SetLocation(r.loc(start, r.pos)), true
}

// collection reads {t, ...} (a set) or {"k": t, ...} (an object), of
// scalars.
func (r *fastReader) collection() (*ast.Term, bool) {
	start := r.pos
	r.pos++
	var elems []*ast.Term
	var pairs [][2]*ast.Term
	for {
		t, ok := r.term()
		if !ok || !scalarTerm(t) {
			return nil, false
		}
		if r.lit(": ") {
			v, ok := r.term()
			if !ok || !scalarTerm(v) || elems != nil {
				return nil, false
			}
			pairs = append(pairs, [2]*ast.Term{t, v})
		} else {
			if pairs != nil {
				return nil, false
			}
			elems = append(elems, t)
		}
		if r.lit("}") {
			break
		}
		if !r.lit(", ") {
			return nil, false
		}
	}
	if pairs != nil {
		return ast.ObjectTerm(pairs...).SetLocation(r.loc(start, r.pos)), true
	}
	return ast.SetTerm(elems...).SetLocation(r.loc(start, r.pos)), true
}
