package istio

import (
	"strconv"
	"strings"
	"unicode/utf8"

	yamlv3 "go.yaml.in/yaml/v3"
)

// The one-parse fast path of Decode. A document is parsed once, into a
// yaml.v3 node tree, and jsonValue reads from the tree the value the slow
// path (sigs.k8s.io/yaml's YAML 1.1 reading, through JSON, as kubectl
// reads manifests) would have made, with the same maps, lists, strings,
// float64 numbers, booleans and nulls. The two YAML libraries read most
// documents alike; where they could differ, jsonValue says so and the
// document takes the slow path, which keeps its messages: anchors and
// aliases, tags (treeValue leaves every document with a "!" to the slow
// path: yaml.v3 reads a lone "!" as an untagged null), merge keys, keys that repeat, strings that are
// not UTF-8, and plain scalars YAML 1.1 reads as something else than
// YAML 1.2 (numbers other than integers, timestamps, .inf and .nan).
// FuzzDecodeFastPath holds the two paths equal.

// jsonValue is the value of node n as the slow path reads it, or false
// where the fast path does not know it does.
func jsonValue(n *yamlv3.Node) (any, bool) {
	if n.Anchor != "" || n.Style&yamlv3.TaggedStyle != 0 {
		return nil, false
	}
	switch n.Kind {
	case yamlv3.DocumentNode:
		if len(n.Content) == 0 {
			return nil, true
		}
		return jsonValue(n.Content[0])
	case yamlv3.MappingNode:
		return jsonObject(n)
	case yamlv3.SequenceNode:
		out := make([]any, len(n.Content))
		for i, item := range n.Content {
			v, ok := jsonValue(item)
			if !ok {
				return nil, false
			}
			out[i] = v
		}
		return out, true
	case yamlv3.ScalarNode:
		if n.Style&notPlain != 0 {
			return n.Value, utf8.ValidString(n.Value)
		}
		return plainValue(n.Value)
	}
	return nil, false // an alias
}

func jsonObject(n *yamlv3.Node) (any, bool) {
	out := make(map[string]any, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, ok := jsonKey(n.Content[i])
		if !ok {
			return nil, false
		}
		if _, dup := out[key]; dup {
			return nil, false
		}
		v, ok := jsonValue(n.Content[i+1])
		if !ok {
			return nil, false
		}
		out[key] = v
	}
	return out, true
}

// notPlain are the styles of scalars that are strings whatever they read.
const notPlain = yamlv3.DoubleQuotedStyle | yamlv3.SingleQuotedStyle | yamlv3.LiteralStyle | yamlv3.FoldedStyle

// jsonKey is a mapping key as the slow path names it: a string, or an
// integer in decimal.
func jsonKey(k *yamlv3.Node) (string, bool) {
	if k.Kind != yamlv3.ScalarNode || k.Anchor != "" || k.Style&yamlv3.TaggedStyle != 0 {
		return "", false
	}
	if k.Style&notPlain != 0 {
		return k.Value, utf8.ValidString(k.Value)
	}
	if k.Value == "<<" {
		return "", false
	}
	switch v, ok := plainValue(k.Value); s := v.(type) {
	case string:
		return s, ok
	case float64:
		if n, err := yaml11Int(k.Value); err == nil {
			return strconv.FormatInt(n, 10), true
		}
	}
	return "", false
}

// yaml11Class is the first-character table of YAML 1.1's resolver
// (go-yaml v2): a plain scalar whose first byte is not in it is a string.
var yaml11Class = func() (t [256]byte) {
	t['+'], t['-'] = 'S', 'S'
	for c := '0'; c <= '9'; c++ {
		t[c] = 'D'
	}
	for _, c := range "yYnNtTfFoO~" {
		t[c] = 'M'
	}
	t['.'] = '.'
	return t
}()

// yaml11Words are the plain scalars YAML 1.1 reads as booleans or null.
var yaml11Words = map[string]any{
	"y": true, "Y": true, "yes": true, "Yes": true, "YES": true,
	"true": true, "True": true, "TRUE": true,
	"on": true, "On": true, "ON": true,
	"n": false, "N": false, "no": false, "No": false, "NO": false,
	"false": false, "False": false, "FALSE": false,
	"off": false, "Off": false, "OFF": false,
	"~": nil, "null": nil, "Null": nil, "NULL": nil,
}

// yaml11Floats are YAML 1.1's names of infinities and NaN, which JSON
// cannot hold: the slow path refuses them.
var yaml11Floats = map[string]bool{
	".nan": true, ".NaN": true, ".NAN": true,
	".inf": true, ".Inf": true, ".INF": true,
	"+.inf": true, "+.Inf": true, "+.INF": true,
	"-.inf": true, "-.Inf": true, "-.INF": true,
}

// plainValue reads a plain scalar as YAML 1.1 does, then through JSON: an
// integer becomes a float64.
func plainValue(s string) (any, bool) {
	if s == "" {
		return nil, true
	}
	class := yaml11Class[s[0]]
	if class == 0 {
		return s, true
	}
	if v, ok := yaml11Words[s]; ok {
		return v, true
	}
	if yaml11Floats[s] {
		return nil, false
	}
	switch class {
	case 'M':
		return s, true
	case '.':
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return nil, false // a float, or .inf or .nan
		}
		return s, true
	}
	if looksLikeTimestamp(s) {
		return nil, false
	}
	if n, err := yaml11Int(s); err == nil {
		if n > 1<<53 || n < -1<<53 {
			return nil, false
		}
		return float64(n), true
	}
	plain := strings.ReplaceAll(s, "_", "")
	if _, err := strconv.ParseUint(plain, 0, 64); err == nil {
		return nil, false
	}
	if _, err := strconv.ParseFloat(plain, 64); err == nil {
		return nil, false
	}
	if strings.HasPrefix(plain, "0b") || strings.HasPrefix(plain, "-0b") {
		return nil, false
	}
	return s, true
}

// yaml11Int reads an integer as YAML 1.1 does: underscores dropped, base
// prefixes (0x, 0o, 0b and a leading 0 for octal) honoured.
func yaml11Int(s string) (int64, error) {
	return strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, 64)
}

// looksLikeTimestamp is go-yaml v2's quick check before it tries
// timestamps: four digits and a dash.
func looksLikeTimestamp(s string) bool {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i == 4 && i < len(s) && s[i] == '-'
}
