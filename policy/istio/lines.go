package istio

import (
	"fmt"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

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
func lineOf(lines map[string]int, prefix string, def int) int {
	if line, ok := lines[strings.TrimSuffix(prefix, ".")]; ok && prefix != "" {
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

// firstLine is the line of the document's first field, or def.
func firstLine(lines map[string]int, def int) int {
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
