package istio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Every condition is generated inside the engine's native fragment
// (policy/lower.go): comparisons and `in` sets of input fields against
// constants, startswith/endswith, net.cidr_contains, regex.match, lower,
// `not`, and references to boolean helper rules. The one exception is a
// wildcard pattern against a list (claims, audiences), which needs
// iteration and so sends its package to topdown.

// conj is a conjunction of Rego expressions: one rule body, or part of one.
type conj []string

// disj is an OR of conjunctions; more than one becomes a helper rule with
// one definition each.
type disj []conj

// strMatcher compares one input field with Istio string patterns: "abc"
// exact, "abc*" prefix, "*abc" suffix, "*" any non-empty value (a "*"
// elsewhere is literal; a leading "*" wins, so "*abc*" is the suffix "abc*").
type strMatcher struct {
	ref     string // the Rego term compared: "input.source.namespace"
	prefix  string // prepended to exact and prefix patterns ("spiffe://")
	fold    bool   // hosts: patterns lower-cased, ref already lower(...)
	present conj   // the condition for "*"
}

func field(ref string) strMatcher {
	return strMatcher{ref: ref, present: conj{ref + ` != ""`}}
}

func (m strMatcher) alts(values []string) disj {
	var exact []string
	var out disj
	for _, v := range values {
		if m.fold {
			v = strings.ToLower(v)
		}
		switch {
		case v == "*":
			out = append(out, m.present)
		case strings.HasPrefix(v, "*"):
			out = append(out, conj{fmt.Sprintf("endswith(%s, %s)", m.ref, quote(v[1:]))})
		case strings.HasSuffix(v, "*"):
			out = append(out, conj{fmt.Sprintf("startswith(%s, %s)", m.ref, quote(m.prefix+v[:len(v)-1]))})
		default:
			exact = append(exact, m.prefix+v)
		}
	}
	return union(equality(m.ref, exact), out)
}

// equality is `ref == v` for one value, `ref in {...}` for several (one
// indexable condition either way); nil for none.
func equality(ref string, values []string) disj {
	values = dedupe(values)
	switch len(values) {
	case 0:
		return nil
	case 1:
		return disj{{ref + " == " + quote(values[0])}}
	}
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = quote(v)
	}
	return disj{{ref + " in {" + strings.Join(quoted, ", ") + "}"}}
}

// union is a followed by the alternatives of b it does not already have.
func union(a, b disj) disj {
	out := slices.Clone(a)
	for _, c := range b {
		if !slices.ContainsFunc(out, func(have conj) bool { return slices.Equal(have, c) }) {
			out = append(out, c)
		}
	}
	return out
}

func dedupe(values []string) []string {
	var out []string
	for _, v := range values {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// listMatcher compares patterns with a field that holds a list of strings
// (request.auth.audiences), or a string or a list (JWT claims, as Istio
// matches a claim that is either): a value matches when the string, or
// some element, does.
type listMatcher struct {
	ref      string
	orString bool // the field may also be a plain string
	elem     string
}

func (m listMatcher) alts(values []string) disj {
	var out disj
	if m.orString {
		out = strMatcher{ref: m.ref, present: nonEmptyString(m.ref)}.alts(values)
	}
	for _, v := range values {
		switch {
		case v == "*":
			// Envoy's `.+`: some element is a non-empty string.
			out = union(out, disj{append(conj{"some " + m.elem + " in " + m.ref}, nonEmptyString(m.elem)...)})
		case strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*"):
			test := field(m.elem).alts([]string{v})[0][0]
			out = union(out, disj{{"some " + m.elem + " in " + m.ref, test}})
		default:
			out = union(out, disj{{quote(v) + " in " + m.ref}})
		}
	}
	return out
}

// nonEmptyString holds when ref is a string other than "" (startswith
// fails on anything but a string), as Envoy's `.+` string match does: a
// number, a boolean, a list or an object is not a string.
func nonEmptyString(ref string) conj {
	return conj{fmt.Sprintf(`startswith(%s, "")`, ref), ref + ` != ""`}
}

// principalMatcher compares principals, written without "spiffe://".
var principalMatcher = strMatcher{ref: "input.source.principal", prefix: "spiffe://", present: conj{`input.source.principal != ""`}}

// hostMatcher compares hosts, case-insensitively.
var hostMatcher = strMatcher{ref: "lower(input.request.host)", fold: true, present: conj{`input.request.host != ""`}}

// cidrAlts is one net.cidr_contains test per IP or CIDR value.
func cidrAlts(ref string, values []string) disj {
	var out disj
	for _, v := range values {
		out = union(out, disj{{fmt.Sprintf("net.cidr_contains(%s, %s)", quote(canonicalCIDR(v)), ref)}})
	}
	return out
}

// canonicalCIDR writes an IP or CIDR as the masked CIDR it denotes;
// IPv4-mapped IPv6 forms become IPv4, as the engine compares them.
func canonicalCIDR(v string) string {
	var p netip.Prefix
	if strings.Contains(v, "/") {
		p, _ = netip.ParsePrefix(v)
	} else if a, err := netip.ParseAddr(v); err == nil {
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked().String()
}

// portAlts compares input.destination.port (a number) with port strings.
func portAlts(values []string) disj {
	var ports []string
	for _, v := range values {
		n, _ := strconv.ParseUint(v, 10, 32)
		ports = append(ports, strconv.FormatUint(n, 10))
	}
	ports = dedupe(ports)
	switch len(ports) {
	case 0:
		return nil
	case 1:
		return disj{{"input.destination.port == " + ports[0]}}
	}
	return disj{{"input.destination.port in {" + strings.Join(ports, ", ") + "}"}}
}

// namespaceAlts matches namespaces. In ztunnel a value is an Istio string
// pattern over the namespace. In a waypoint, Istio's srcNamespaceGenerator
// writes each value as the regular expression `.*/ns/<value>/.*` over the
// peer's principal, every "*" becoming `.*`: so "a*c" matches namespace
// "abc", and since `.*` also spans "/", "*a" matches every Kubernetes
// identity (".../ns/foo/s" + "a/x"). A value without "*", and "*" itself,
// compare with the namespace the engine derives from the principal, as in
// ztunnel: on every principal the engine derives a namespace from, that
// is what Istio's expression decides.
func namespaceAlts(values []string, waypoint bool) disj {
	const ref = "input.source.namespace"
	if !waypoint {
		return field(ref).alts(values)
	}
	var plain []string
	var out disj
	for _, v := range values {
		if v == "*" || !strings.Contains(v, "*") {
			plain = append(plain, v)
			continue
		}
		parts := strings.Split(v, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re := "^.*/ns/" + strings.Join(parts, ".*") + "/.*$"
		out = union(out, disj{{fmt.Sprintf("regex.match(%s, input.source.principal)", rawString(re))}})
	}
	return union(field(ref).alts(plain), out)
}

// requestPrincipalAlts matches requestPrincipals and request.auth.principal
// as Istio does since 1.22 (requestPrincipalGenerator): a value splits at
// its last "/" into an issuer and a subject pattern, each matched on its
// own, and the principal "<iss>/<sub>" splits at its last "/" too (a
// subject holding "/" is read as part of the issuer). "*" is any issuer
// and subject, both non-empty; a leading "*" makes the issuer a suffix (or
// any, for "*/<sub>") with an exact subject, or, without "/", the subject
// a suffix; a trailing "*" makes the subject a prefix (or any, for
// "<iss>/*") with an exact issuer, or, without "/", the issuer a prefix;
// anything else is the exact issuer and subject ("foo" is issuer "foo"
// with an empty subject). So "https://issuer.exa*" is issuer "https:/"
// and a subject starting "issuer.exa".
func requestPrincipalAlts(values []string) disj {
	const ref = "input.request.auth.principal"
	var exact []string
	var out disj
	for _, v := range values {
		iss, sub := principalPatterns(v)
		if iss.op == matchExact && sub.op == matchExact {
			exact = append(exact, iss.text+"/"+sub.text)
			continue
		}
		re := "^" + iss.regex(".") + "/" + sub.regex("[^/]") + "$"
		out = union(out, disj{{fmt.Sprintf("regex.match(%s, %s)", rawString(re), ref)}})
	}
	return union(equality(ref, exact), out)
}

// claimPattern is one of Envoy's string matchers on a JWT claim.
type claimPattern struct {
	op   matchOp
	text string
}

type matchOp int

const (
	matchExact matchOp = iota
	matchPrefix
	matchSuffix
	matchAny // Istio's `.+`: any non-empty value
)

// regex is the pattern as an unanchored regular expression whose any
// character is char ("." for an issuer, "[^/]" for a subject).
func (c claimPattern) regex(char string) string {
	switch c.op {
	case matchPrefix:
		return regexp.QuoteMeta(c.text) + char + "*"
	case matchSuffix:
		return char + "*" + regexp.QuoteMeta(c.text)
	case matchAny:
		return char + "+"
	}
	return regexp.QuoteMeta(c.text)
}

// principalPatterns splits a requestPrincipals value into its issuer and
// subject patterns, as Istio's requestPrincipalGenerator does.
func principalPatterns(v string) (iss, sub claimPattern) {
	idx := strings.LastIndex(v, "/")
	found := idx >= 0
	issText, subText := v, ""
	if found {
		issText, subText = v[:idx], v[idx+1:]
	}
	anyValue := claimPattern{op: matchAny}
	switch {
	case v == "*":
		return anyValue, anyValue
	case strings.HasPrefix(v, "*") && found:
		if issText == "*" {
			return anyValue, claimPattern{matchExact, subText}
		}
		return claimPattern{matchSuffix, strings.TrimPrefix(issText, "*")}, claimPattern{matchExact, subText}
	case strings.HasPrefix(v, "*"):
		return anyValue, claimPattern{matchSuffix, strings.TrimPrefix(v, "*")}
	case strings.HasSuffix(v, "*") && found:
		if subText == "*" {
			return claimPattern{matchExact, issText}, anyValue
		}
		return claimPattern{matchExact, issText}, claimPattern{matchPrefix, strings.TrimSuffix(subText, "*")}
	case strings.HasSuffix(v, "*"):
		return claimPattern{matchPrefix, strings.TrimSuffix(v, "*")}, anyValue
	}
	return claimPattern{matchExact, issText}, claimPattern{matchExact, subText}
}

// trustDomainAlts matches trust domains (trustDomains, source.trustDomain)
// as Istio's srcTrustDomainGenerator does: "*" is any, a value without
// "*" is exact, and otherwise the first "*" is a wildcard anywhere in the
// value ("cluster.*", "*.local", "prod-*.example") while later ones are
// literal.
func trustDomainAlts(values []string) disj {
	const ref = "input.source.trust_domain"
	var exact []string
	var out disj
	for _, v := range values {
		before, after, wild := strings.Cut(v, "*")
		var c string
		switch {
		case !wild:
			exact = append(exact, v)
			continue
		case v == "*":
			c = ref + ` != ""`
		case after == "":
			c = fmt.Sprintf("startswith(%s, %s)", ref, quote(before))
		case before == "":
			c = fmt.Sprintf("endswith(%s, %s)", ref, quote(after))
		default:
			re := "^" + regexp.QuoteMeta(before) + ".*" + regexp.QuoteMeta(after) + "$"
			c = fmt.Sprintf("regex.match(%s, %s)", rawString(re), ref)
		}
		out = union(out, disj{{c}})
	}
	return union(equality(ref, exact), out)
}

// serviceAccountAlts matches "ns/sa", or "sa" in the policy's namespace,
// against the identity the engine derives from the principal.
func serviceAccountAlts(values []string, policyNamespace string) disj {
	var out disj
	for _, v := range values {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNamespace, v
		}
		out = union(out, disj{{"input.source.namespace == " + quote(ns), "input.source.service_account == " + quote(sa)}})
	}
	return out
}

// pathAlts matches the normalized request path: URI templates as Envoy's
// uri_template matcher does, anything else as an Istio string pattern.
func pathAlts(values []string) disj {
	var plain []string
	var templates disj
	for _, v := range values {
		if isPathTemplate(v) {
			templates = append(templates, conj{fmt.Sprintf("regex.match(%s, input.request.url_path)", rawString(templateRegex(v)))})
			continue
		}
		plain = append(plain, v)
	}
	return union(field("input.request.url_path").alts(plain), templates)
}

const (
	matchOneTemplate = "{*}"
	matchAnyTemplate = "{**}"
	// pchar is Envoy's literal set for path templates (RFC 3986 pchar
	// without "*"); {*} is one or more of them, {**} any run of them and "/".
	pchar = `a-zA-Z0-9\-._~%!$&'()+,;:@=`
)

func isPathTemplate(path string) bool {
	return strings.Contains(path, matchOneTemplate) || strings.Contains(path, matchAnyTemplate)
}

// templateRegex is the anchored regular expression of a valid template.
func templateRegex(path string) string {
	var b strings.Builder
	b.WriteString("^")
	for i, seg := range strings.Split(path, "/") {
		if i > 0 {
			b.WriteString("/")
		}
		switch seg {
		case matchOneTemplate:
			b.WriteString("[" + pchar + "]+")
		case matchAnyTemplate:
			b.WriteString("[" + pchar + "/]*")
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return b.String()
}

// quote writes s as a Rego (JSON) string.
func quote(s string) string {
	if plainASCII(s) {
		return `"` + s + `"`
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

// plainASCII says whether JSON writes s as it is, between quotes:
// printable ASCII without quotes or backslashes.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// rawString writes s as a Rego raw string when it can, for readable
// regular expressions.
func rawString(s string) string {
	if strings.ContainsAny(s, "`\r\n") {
		return quote(s)
	}
	return "`" + s + "`"
}

// identRE is a key usable after a dot in a Rego reference.
var identRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// refKey extends a reference by key: ".app" when key is an identifier
// (and not a Rego keyword), `["app.kubernetes.io/name"]` otherwise.
func refKey(key string) string {
	if identRE.MatchString(key) && !regoKeywords[key] {
		return "." + key
	}
	return "[" + quote(key) + "]"
}

var regoKeywords = map[string]bool{
	"as": true, "contains": true, "data": true, "default": true, "else": true, "every": true, "false": true,
	"if": true, "import": true, "in": true, "input": true, "not": true, "null": true, "package": true,
	"some": true, "true": true, "with": true,
}

// negatable says whether `not <e>` means what it says for an absent
// field: only a plain `ref == constant` does. OPA evaluates the arguments
// of calls (`!=`, `in`, startswith, net.cidr_contains, lower) before
// applying `not`, so `not startswith(input.source.principal, "x")` is
// undefined, not true, for a plaintext peer. Everything else is negated
// through a helper rule, which is false when the field is absent.
func negatable(e string) bool {
	ref, _, ok := strings.Cut(e, " == ")
	return ok && strings.HasPrefix(ref, "input.") && !strings.ContainsAny(ref, "( ")
}
