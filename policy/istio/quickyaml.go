package istio

import (
	"bytes"
	"strconv"
	"strings"
)

// quickValue reads the plain kind of YAML document manifests are written
// in, several times faster than a YAML library builds its node tree: a
// block mapping at the root, of block mappings, block sequences, one-line
// flow collections and one-line scalars (plain, or quoted without
// escapes), printable ASCII only, indented by spaces. It returns the value
// jsonValue would read and the document's first line (the root's first
// key's, 1 for the document's first line), or false for anything else
// (a tab, a multi-line scalar, an anchor, a tag, a block scalar, a
// comment inside a flow collection...), and jsonValue decides. It never
// reads a document YAML refuses: FuzzDecodeFastPath holds both to the slow
// path.
func quickValue(text []byte) (any, int, bool) {
	q := &quickParser{}
	if !q.split(text) {
		return nil, 0, false
	}
	if len(q.lines) == 0 {
		return nil, 0, true // blank, or only comments
	}
	first := q.lines[0]
	if first.indent != 0 || !q.isEntry(first.text) {
		return nil, 0, false
	}
	v, ok := q.mapping(0)
	if !ok || q.pos != len(q.lines) {
		return nil, 0, false
	}
	if key, _, _ := q.cutKey(first.text); strings.ContainsAny(key, ".[") {
		return nil, 0, false // documentLine must build the lines to know
	}
	return v, first.num, true
}

// quickParser holds a document's lines with content, comments and blank
// lines left out.
type quickParser struct {
	lines []quickLine
	pos   int
}

type quickLine struct {
	num    int    // 1-based, in the document
	indent int    // spaces before text
	text   string // no trailing spaces
}

// split reads the lines, refusing characters the parser does not handle:
// tabs, carriage returns, control characters and non-ASCII bytes (YAML
// 1.1 takes some as line breaks), and document markers.
func (q *quickParser) split(text []byte) bool {
	for _, c := range text {
		if (c < ' ' && c != '\n') || c > '~' {
			return false
		}
	}
	q.lines = make([]quickLine, 0, bytes.Count(text, []byte("\n"))+1)
	rest := string(text) // one copy: keys and values are parts of it
	for i := 1; rest != ""; i++ {
		line, tail, _ := strings.Cut(rest, "\n")
		rest = tail
		s := strings.TrimRight(line, " ")
		content := strings.TrimLeft(s, " ")
		if content == "" || content[0] == '#' {
			continue
		}
		indent := len(s) - len(content)
		if indent == 0 && (strings.HasPrefix(content, "...") || content[0] == '%' || strings.HasPrefix(content, "---")) {
			return false
		}
		q.lines = append(q.lines, quickLine{num: i, indent: indent, text: content})
	}
	return true
}

// isEntry says whether text starts a mapping entry: "key:" or "key: ...".
func (q *quickParser) isEntry(text string) bool {
	_, _, ok := q.cutKey(text)
	return ok
}

// cutKey splits a mapping entry into its key (resolved as jsonKey does)
// and what follows the colon.
func (q *quickParser) cutKey(text string) (key, rest string, ok bool) {
	var raw string
	switch text[0] {
	case '"', '\'':
		end := strings.IndexByte(text[1:], text[0])
		if end < 0 {
			return "", "", false
		}
		key, rest = text[1:1+end], text[2+end:]
		if strings.ContainsRune(key, '\\') || (rest != "" && rest[0] == text[0]) {
			return "", "", false // an escape, or '' in a single-quoted key
		}
	default:
		if indicator(text) {
			return "", "", false
		}
		i := strings.Index(text, ": ")
		if i < 0 {
			if !strings.HasSuffix(text, ":") {
				return "", "", false
			}
			i = len(text) - 1
		}
		raw, rest = text[:i], text[i:]
		if strings.Contains(raw, " #") || strings.HasSuffix(raw, " ") || raw == "<<" {
			return "", "", false
		}
		v, ok := plainValue(raw)
		switch s := v.(type) {
		case string:
			key = s
		default:
			if !ok || v == nil {
				return "", "", false
			}
			if _, isNumber := v.(float64); !isNumber {
				return "", "", false
			}
			n, err := yaml11Int(raw)
			if err != nil {
				return "", "", false
			}
			key = strconv.FormatInt(n, 10)
		}
	}
	if rest == "" || rest[0] != ':' || (len(rest) > 1 && rest[1] != ' ') {
		return "", "", false
	}
	return key, strings.TrimLeft(rest[1:], " "), true
}

// indicator says whether a plain scalar cannot start text: YAML gives its
// first character another meaning.
func indicator(text string) bool {
	switch text[0] {
	case '-', '?', ':':
		return len(text) == 1 || text[1] == ' '
	case ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`':
		return true
	}
	return false
}

// isItem says whether text starts a block sequence entry.
func isItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// mapping reads the block mapping whose keys are at indent.
func (q *quickParser) mapping(indent int) (any, bool) {
	out := map[string]any{}
	for q.pos < len(q.lines) && q.lines[q.pos].indent == indent {
		l := q.lines[q.pos]
		key, rest, ok := q.cutKey(l.text)
		if !ok {
			return nil, false
		}
		if _, dup := out[key]; dup {
			return nil, false
		}
		q.pos++
		v, ok := q.value(indent, rest, true)
		if !ok {
			return nil, false
		}
		out[key] = v
	}
	if q.pos < len(q.lines) && q.lines[q.pos].indent > indent {
		return nil, false
	}
	return out, true
}

// sequence reads the block sequence whose dashes are at indent.
func (q *quickParser) sequence(indent int) (any, bool) {
	out := []any{}
	for q.pos < len(q.lines) && q.lines[q.pos].indent == indent && isItem(q.lines[q.pos].text) {
		l := &q.lines[q.pos]
		rest := strings.TrimLeft(strings.TrimPrefix(l.text, "-"), " ")
		if rest != "" && q.isEntry(rest) {
			// "- key: value": a mapping whose keys are at the column of key.
			l.indent += len(l.text) - len(rest)
			l.text = rest
			v, ok := q.mapping(l.indent)
			if !ok {
				return nil, false
			}
			out = append(out, v)
			continue
		}
		q.pos++
		v, ok := q.value(indent, rest, false)
		if !ok {
			return nil, false
		}
		out = append(out, v)
	}
	if q.pos < len(q.lines) && q.lines[q.pos].indent > indent {
		return nil, false
	}
	return out, true
}

// value reads what follows a key's colon (inMapping) or a dash at indent:
// rest, or the block collection on the lines below.
func (q *quickParser) value(indent int, rest string, inMapping bool) (any, bool) {
	if rest == "" || rest[0] == '#' {
		if q.pos == len(q.lines) {
			return nil, true
		}
		next := q.lines[q.pos]
		switch {
		case next.indent > indent && isItem(next.text):
			return q.sequence(next.indent)
		case next.indent > indent:
			if !q.isEntry(next.text) {
				return nil, false
			}
			return q.mapping(next.indent)
		case next.indent == indent && inMapping && isItem(next.text):
			return q.sequence(indent)
		}
		return nil, true
	}
	if q.pos < len(q.lines) && q.lines[q.pos].indent > indent {
		return nil, false // a scalar going on below, or a mistake
	}
	v, tail, ok := q.inline(rest, false)
	if !ok || (tail != "" && !strings.HasPrefix(strings.TrimLeft(tail, " "), "#")) || (tail != "" && tail[0] != ' ') {
		return nil, false // more than a comment after the value
	}
	return v, true
}

// inline reads a scalar or a flow collection at the start of s, and
// returns what follows it.
func (q *quickParser) inline(s string, flow bool) (any, string, bool) {
	switch s[0] {
	case '[':
		return q.flowSequence(s[1:])
	case '{':
		return q.flowMapping(s[1:])
	case '"', '\'':
		end := strings.IndexByte(s[1:], s[0])
		if end < 0 {
			return nil, "", false
		}
		v, tail := s[1:1+end], s[2+end:]
		if strings.ContainsRune(v, '\\') || (tail != "" && tail[0] == s[0]) {
			return nil, "", false
		}
		return v, tail, true
	}
	if indicator(s) {
		return nil, "", false
	}
	end := len(s)
	if i := strings.Index(s, " #"); i >= 0 {
		end = i
	}
	if flow {
		if i := strings.IndexAny(s[:end], ",[]{}"); i >= 0 {
			end = i
		}
	}
	raw := strings.TrimRight(s[:end], " ")
	if flow && strings.ContainsAny(raw, ":?") {
		return nil, "", false // YAML libraries disagree on these in flow collections
	}
	if strings.Contains(raw, ": ") || strings.HasSuffix(raw, ":") {
		return nil, "", false // a mapping where YAML allows none, or a key in a flow mapping
	}
	v, ok := plainValue(raw)
	return v, s[len(raw):], ok
}

// flowSequence reads "a, b]" (after the bracket).
func (q *quickParser) flowSequence(s string) (any, string, bool) {
	out := []any{}
	s = strings.TrimLeft(s, " ")
	for len(s) > 0 && s[0] != ']' {
		v, tail, ok := q.inline(s, true)
		if !ok {
			return nil, "", false
		}
		out = append(out, v)
		if s, ok = q.flowNext(tail, ']'); !ok {
			return nil, "", false
		}
	}
	if s == "" {
		return nil, "", false
	}
	return out, s[1:], true
}

// flowMapping reads "a: b, c: d}" (after the brace).
func (q *quickParser) flowMapping(s string) (any, string, bool) {
	out := map[string]any{}
	s = strings.TrimLeft(s, " ")
	for len(s) > 0 && s[0] != '}' {
		if s[0] != '"' && s[0] != '\'' {
			if i := strings.Index(s, ": "); i < 0 || strings.ContainsAny(s[:i], ",[]{}:?") {
				return nil, "", false // an entry without a value, or the mapping's end
			}
		}
		key, rest, ok := q.cutKey(s)
		if !ok || rest == "" {
			return nil, "", false
		}
		if _, dup := out[key]; dup {
			return nil, "", false
		}
		v, tail, ok := q.inline(rest, true)
		if !ok {
			return nil, "", false
		}
		out[key] = v
		if s, ok = q.flowNext(tail, '}'); !ok {
			return nil, "", false
		}
	}
	if s == "" {
		return nil, "", false
	}
	return out, s[1:], true
}

// flowNext steps over the comma after an entry; s then starts the next
// entry or is the closing bracket. A trailing comma is left to YAML.
func (q *quickParser) flowNext(s string, closing byte) (string, bool) {
	s = strings.TrimLeft(s, " ")
	switch {
	case s == "":
		return "", false
	case s[0] == closing:
		return s, true
	case s[0] == ',':
		s = strings.TrimLeft(s[1:], " ")
		return s, s != "" && s[0] != closing && s[0] != ','
	}
	return "", false
}
