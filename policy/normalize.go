package policy

import "strings"

// NormalizePath returns the path that policies match on, normalized as
// Istio's default (BASE) normalization does: the query and fragment are
// removed, percent-encoded unreserved characters are decoded, backslashes
// become slashes, and "." and ".." segments are resolved (RFC 3986 section
// 5.2.4). Other escapes stay as they came, in their own case ("%2f" and
// "%2F" differ, as Envoy's NormalizeCasePath is off in Istio), and slashes
// are not merged.
func NormalizePath(raw string) string {
	// One pass finds whether there is anything to do: most paths have
	// nothing but a query to drop, and nothing to normalize before it.
	i := 0
	for i < len(raw) && !pathSpecial[raw[i]] {
		i++
	}
	if i == len(raw) || raw[i] == '?' || raw[i] == '#' {
		return raw[:i]
	}
	if j := strings.IndexAny(raw, "?#"); j >= 0 {
		raw = raw[:j]
	}
	if raw == "" || raw == "*" {
		return raw
	}
	decoded := decodeUnreserved(raw)
	decoded = strings.ReplaceAll(decoded, `\`, "/")
	return removeDotSegments(decoded)
}

func decodeUnreserved(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			b.WriteByte(s[i])
			continue
		}
		c := unhex(s[i+1])<<4 | unhex(s[i+2])
		if isUnreserved(c) {
			b.WriteByte(c)
		} else {
			b.WriteString(s[i : i+3])
		}
		i += 2
	}
	return b.String()
}

// removeDotSegments resolves "." and ".." as RFC 3986 section 5.2.4 does; ".."
// never climbs above the root.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	absolute := strings.HasPrefix(p, "/")
	segments := strings.Split(strings.TrimPrefix(p, "/"), "/")
	out := make([]string, 0, len(segments))
	for i, seg := range segments {
		last := i == len(segments)-1
		switch seg {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	joined := strings.Join(out, "/")
	if absolute {
		return "/" + joined
	}
	return joined
}

// pathSpecial marks the bytes NormalizePath acts on: the query and the
// fragment, escapes, backslashes and dots.
var pathSpecial = [256]bool{'?': true, '#': true, '%': true, '\\': true, '.': true}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
