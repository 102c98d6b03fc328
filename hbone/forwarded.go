package hbone

import (
	"fmt"
	"net/netip"
	"strings"
)

// FormatForwarded returns the Forwarded header value (RFC 7239) naming addr
// as the client: for="10.1.0.5:40122", for="[fd00::5]:40122". The value is
// always quoted (a port's colon requires it) and IPv4-mapped IPv6 addresses
// are written in their IPv4 form. A zero port is left out.
func FormatForwarded(addr netip.AddrPort) string {
	ip := addr.Addr().Unmap()
	var b strings.Builder
	b.WriteString(`for="`)
	if ip.Is6() {
		b.WriteString("[" + ip.String() + "]")
	} else {
		b.WriteString(ip.String())
	}
	if addr.Port() != 0 {
		fmt.Fprintf(&b, ":%d", addr.Port())
	}
	b.WriteString(`"`)
	return b.String()
}

// ParseForwarded returns the client that the first element of a Forwarded
// header (RFC 7239) names with its "for" parameter: the original client,
// since each proxy appends its own element. Port 0 means the element named
// no port. The zero AddrPort means no address: the header is empty, the
// first element has no "for", or it names "unknown" or an obfuscated node.
// IPv4-mapped IPv6 addresses are returned in their IPv4 form.
//
// The whole header must follow RFC 7239's grammar; anything else is an
// error wrapping ErrBadRequest (the address feeds policy, so a header that
// cannot be read is refused rather than guessed at).
func ParseForwarded(v string) (netip.AddrPort, error) {
	p := forwardedParser{s: v}
	client, err := p.parse()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: Forwarded %q: %w", ErrBadRequest, v, err)
	}
	return client, nil
}

// forwardedParser reads the header left to right, one pair at a time.
type forwardedParser struct {
	s string
	i int
}

func (p *forwardedParser) parse() (netip.AddrPort, error) {
	var client netip.AddrPort
	first, sawFor := true, false
	for p.skipSpace(); p.i < len(p.s); {
		name, value, err := p.pair()
		if err != nil {
			return netip.AddrPort{}, err
		}
		if strings.EqualFold(name, "for") {
			if sawFor {
				return netip.AddrPort{}, fmt.Errorf(`"for" repeated in one element`)
			}
			sawFor = true
			node, err := parseNode(value)
			if err != nil {
				return netip.AddrPort{}, err
			}
			if first {
				client = node
			}
		}
		if p.skipSpace(); p.i == len(p.s) {
			break
		}
		switch p.s[p.i] {
		case ';':
		case ',':
			first, sawFor = false, false
		default:
			return netip.AddrPort{}, fmt.Errorf("unexpected %q at offset %d", p.s[p.i], p.i)
		}
		p.i++
		p.skipSpace()
		if p.i == len(p.s) {
			return netip.AddrPort{}, fmt.Errorf("trailing separator")
		}
	}
	return client, nil
}

// pair reads token "=" (token / quoted-string).
func (p *forwardedParser) pair() (name, value string, err error) {
	name = p.token()
	if name == "" || p.i == len(p.s) || p.s[p.i] != '=' {
		return "", "", fmt.Errorf("want name=value at offset %d", p.i)
	}
	p.i++
	if p.i < len(p.s) && p.s[p.i] == '"' {
		value, err = p.quoted()
		return name, value, err
	}
	if value = p.token(); value == "" {
		return "", "", fmt.Errorf("empty value for %q", name)
	}
	return name, value, nil
}

func (p *forwardedParser) token() string {
	start := p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// quoted reads a quoted-string, resolving quoted-pairs.
func (p *forwardedParser) quoted() (string, error) {
	var b strings.Builder
	for p.i++; p.i < len(p.s); p.i++ {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\' && p.i+1 < len(p.s) && isQuotable(p.s[p.i+1]):
			p.i++
			b.WriteByte(p.s[p.i])
		case c == '\t' || c == ' ' || c == '!' || (c >= '#' && c != '\\' && c != 0x7f):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("invalid byte %q in quoted string", c)
		}
	}
	return "", fmt.Errorf("unterminated quoted string")
}

func (p *forwardedParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// parseNode reads RFC 7239's node: nodename [":" node-port].
func parseNode(v string) (netip.AddrPort, error) {
	host, port, hasPort := splitNode(v)
	if host == "unknown" || strings.HasPrefix(host, "_") {
		if err := checkObfuscated(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("node %q: %w", v, err)
		}
		return netip.AddrPort{}, checkNodePort(v, port, hasPort)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" || ip.Is6() != strings.HasPrefix(v, "[") {
		return netip.AddrPort{}, fmt.Errorf("node %q: want an IPv4 address or a bracketed IPv6 address", v)
	}
	if err := checkNodePort(v, port, hasPort); err != nil || strings.HasPrefix(port, "_") || !hasPort {
		return netip.AddrPortFrom(ip.Unmap(), 0), err
	}
	n, _ := parsePort(port)
	return netip.AddrPortFrom(ip.Unmap(), n), nil
}

// splitNode splits "host", "host:port", "[v6]" and "[v6]:port"; a host
// that is malformed is left for the caller to refuse.
func splitNode(v string) (host, port string, hasPort bool) {
	if rest, ok := strings.CutPrefix(v, "["); ok {
		var closed bool
		host, port, closed = strings.Cut(rest, "]")
		port, hasPort = strings.CutPrefix(port, ":")
		if !closed || (!hasPort && port != "") {
			return v, "", false // not an address: the caller refuses it
		}
		return host, port, hasPort
	}
	return strings.Cut(v, ":")
}

// checkNodePort accepts a port in 1-65535 or an obfuscated port.
func checkNodePort(v, port string, hasPort bool) error {
	if !hasPort {
		return nil
	}
	var err error
	if strings.HasPrefix(port, "_") {
		err = checkObfuscated(port)
	} else {
		_, err = parsePort(port)
	}
	if err != nil {
		return fmt.Errorf("node %q: %w", v, err)
	}
	return nil
}

// checkObfuscated accepts "unknown" and "_" 1*(ALPHA / DIGIT / "." / "_" / "-").
func checkObfuscated(v string) error {
	if v == "unknown" {
		return nil
	}
	if len(v) < 2 {
		return fmt.Errorf("obfuscated identifier %q is empty", v)
	}
	for i := 1; i < len(v); i++ {
		c := v[i]
		if !(isAlnum(c) || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("obfuscated identifier %q: invalid byte %q", v, c)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// isTokenChar reports whether c is an RFC 9110 tchar.
func isTokenChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isQuotable(c byte) bool {
	return c == '\t' || (c >= ' ' && c != 0x7f)
}
