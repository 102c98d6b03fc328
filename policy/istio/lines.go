package istio

import (
	"fmt"
	"strings"
	"sync"

	yamlv3 "go.yaml.in/yaml/v3"
)

// lineIndex finds the line of a field path ("spec.rules[0]") of one
// resource. Only messages need it, so a document on the fast path keeps
// its text and is parsed for lines the first time one is asked for;
// Decode itself asks only for its first line (documentLine).
type lineIndex struct {
	once   sync.Once
	text   []byte // the document, nil once lines is built
	first  int    // the stream's line of the document's first line
	prefix string // of the resource's fields in the document: "items[2]." in a List
	lines  map[string]int
}

// textLines is the index of the fields under prefix in document text.
func textLines(text []byte, first int, prefix string) *lineIndex {
	return &lineIndex{text: text, first: first, prefix: prefix}
}

// mapLines is the index of lines, already built.
func mapLines(lines map[string]int) *lineIndex {
	return &lineIndex{lines: lines}
}

// line is the line of path, if it is known.
func (l *lineIndex) line(path string) (int, bool) {
	if l == nil {
		return 0, false
	}
	l.once.Do(func() {
		if l.lines == nil {
			l.lines = subLines(fieldLines(l.text, l.first), l.prefix)
		}
		l.text = nil
	})
	line, ok := l.lines[path]
	return line, ok
}

// sub is the index of the fields under prefix ("items[2].").
func (l *lineIndex) sub(prefix string) *lineIndex {
	if prefix == "" {
		return l
	}
	l.line("") // builds l.lines
	return mapLines(subLines(l.lines, prefix))
}

// documentLine is the line of the first field of the document root (the
// document starting at firstLine): the smallest line fieldLines maps, as
// firstLine finds it, without building the map where no two paths can
// be one (a key with a dot or a bracket can be another field's path).
func documentLine(root *yamlv3.Node, firstLine int) int {
	if root.Kind == yamlv3.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	if (root.Kind != yamlv3.MappingNode && root.Kind != yamlv3.SequenceNode) || len(root.Content) == 0 {
		return firstLine
	}
	if first := root.Content[0]; root.Kind == yamlv3.SequenceNode || !strings.ContainsAny(first.Value, ".[") {
		return first.Line + firstLine - 1
	}
	lines := map[string]int{}
	walkLines(root, "", firstLine-1, lines)
	return minLine(lines, firstLine)
}

// fieldLines maps every field path of a YAML document ("spec.rules[0]",
// "spec.rules[0].from[1].source.principals[2]") to its line in the stream,
// the document starting at firstLine. Field-level positions make messages
// point at the value to fix; on any parse problem the map is just empty.
func fieldLines(text []byte, firstLine int) map[string]int {
	var root yamlv3.Node
	lines := map[string]int{}
	if err := yamlv3.Unmarshal(text, &root); err != nil || len(root.Content) == 0 {
		return lines
	}
	walkLines(root.Content[0], "", firstLine-1, lines)
	return lines
}

func walkLines(n *yamlv3.Node, path string, offset int, lines map[string]int) {
	switch n.Kind {
	case yamlv3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if path != "" {
				key = path + "." + key
			}
			lines[key] = n.Content[i].Line + offset
			walkLines(n.Content[i+1], key, offset, lines)
		}
	case yamlv3.SequenceNode:
		for i, item := range n.Content {
			key := fmt.Sprintf("%s[%d]", path, i)
			lines[key] = item.Line + offset
			walkLines(item, key, offset, lines)
		}
	}
}

// lineOf is the line of the object at prefix ("items[2]." in a List, ""
// for the document itself), or def.
func lineOf(lines *lineIndex, prefix string, def int) int {
	if prefix == "" {
		return def
	}
	if line, ok := lines.line(strings.TrimSuffix(prefix, ".")); ok {
		return line
	}
	return def
}

// subLines is the part of lines under prefix, with prefix removed.
func subLines(lines map[string]int, prefix string) map[string]int {
	if prefix == "" {
		return lines
	}
	out := map[string]int{}
	for path, line := range lines {
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			out[rest] = line
		}
	}
	return out
}

// minLine is the line of the document's first field, or def.
func minLine(lines map[string]int, def int) int {
	first := 0
	for _, line := range lines {
		if first == 0 || line < first {
			first = line
		}
	}
	if first == 0 {
		return def
	}
	return first
}
