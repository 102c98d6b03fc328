# Istio string, principal, host and path matching.
#
# Helpers with the matching semantics of Istio's AuthorizationPolicy, for
# translated policies and hand-written Rego alike. They use only standard
# built-ins, so the stock OPA CLI runs them and their tests.
#
# Every helper is true or undefined (never false), and undefined when the
# value is not a string, so an absent attribute (a plaintext peer has no
# source.principal) never matches. Beware when negating: Rego evaluates the
# arguments first, so `not principal_match(p, input.source.principal)` is
# undefined, not true, for a plaintext peer. A deny rule written that way
# would not fire; put the match in its own rule and negate the rule:
#
#   from_frontend if principal_match("td/ns/shop/sa/frontend", input.source.principal)
#   deny contains {...} if not from_frontend
package mesh.authz

# string_match is Istio's string match: "*" matches any non-empty value,
# "*abc" is a suffix, "abc*" a prefix, anything else is exact (a "*" in the
# middle is literal). A leading "*" wins over a trailing one, as in Istio:
# "*abc*" is the suffix "abc*".
string_match(pattern, value) if {
	is_string(value)
	pattern == "*"
	value != ""
}

string_match(pattern, value) if {
	is_string(pattern)
	is_string(value)
	pattern != "*"
	startswith(pattern, "*")
	endswith(value, substring(pattern, 1, -1))
}

string_match(pattern, value) if {
	is_string(pattern)
	is_string(value)
	not startswith(pattern, "*")
	endswith(pattern, "*")
	startswith(value, substring(pattern, 0, count(pattern) - 1))
}

string_match(pattern, value) if {
	is_string(pattern)
	is_string(value)
	not startswith(pattern, "*")
	not endswith(pattern, "*")
	pattern == value
}

# any_match holds when some pattern in patterns string_matches value.
any_match(patterns, value) if {
	some pattern in patterns
	string_match(pattern, value)
}

# principal_match compares SPIFFE IDs without the "spiffe://" scheme, as
# Istio principals are written: "td/ns/a/sa/x" or "*/sa/x" match
# "spiffe://td/ns/a/sa/x". A pattern that carries the scheme works too.
principal_match(pattern, principal) if {
	is_string(pattern)
	is_string(principal)
	string_match(trim_prefix(pattern, "spiffe://"), trim_prefix(principal, "spiffe://"))
}

# request_principal_match is Istio's match of requestPrincipals and
# request.auth.principal (since Istio 1.22): the pattern splits at its last
# "/" into an issuer and a subject pattern, each matched on its own against
# the principal "<iss>/<sub>", split at its last "/" too. "*" is any
# non-empty issuer and subject. A leading "*" makes the issuer a suffix (or
# any, for "*/<sub>") with an exact subject, or, without "/", the subject a
# suffix. A trailing "*" makes the subject a prefix (or any, for
# "<iss>/*") with an exact issuer, or, without "/", the issuer a prefix.
# Anything else is the exact issuer and subject. So "https://issuer.exa*"
# is issuer "https:/" with a subject starting "issuer.exa".
request_principal_match(pattern, principal) if {
	is_string(pattern)
	is_string(principal)
	have := last_slash_split(principal)
	have.found
	want := principal_patterns(pattern, last_slash_split(pattern))
	claim_match(want.iss, have.iss)
	claim_match(want.sub, have.sub)
}

# last_slash_split splits s at its last "/": {"iss", "sub", "found"}; without
# a "/" all of s is the issuer.
last_slash_split(s) := {"iss": concat("/", array.slice(parts, 0, n - 1)), "sub": parts[n - 1], "found": true} if {
	parts := split(s, "/")
	n := count(parts)
	n > 1
} else := {"iss": s, "sub": "", "found": false}

principal_patterns("*", _) := {"iss": ["any", ""], "sub": ["any", ""]}

principal_patterns(p, s) := {"iss": star_or("suffix", trim_prefix(s.iss, "*"), s.iss), "sub": ["exact", s.sub]} if {
	p != "*"
	startswith(p, "*")
	s.found
}

principal_patterns(p, s) := {"iss": ["any", ""], "sub": ["suffix", trim_prefix(p, "*")]} if {
	p != "*"
	startswith(p, "*")
	not s.found
}

principal_patterns(p, s) := {"iss": ["exact", s.iss], "sub": star_or("prefix", trim_suffix(s.sub, "*"), s.sub)} if {
	not startswith(p, "*")
	endswith(p, "*")
	s.found
}

principal_patterns(p, s) := {"iss": ["prefix", trim_suffix(p, "*")], "sub": ["any", ""]} if {
	not startswith(p, "*")
	endswith(p, "*")
	not s.found
}

principal_patterns(p, s) := {"iss": ["exact", s.iss], "sub": ["exact", s.sub]} if {
	not startswith(p, "*")
	not endswith(p, "*")
}

# star_or is ["any", ""] when part is "*", else [op, text].
star_or(_, _, "*") := ["any", ""]

star_or(op, text, part) := [op, text] if part != "*"

claim_match(["any", _], v) if v != ""

claim_match(["exact", x], v) if v == x

claim_match(["prefix", x], v) if startswith(v, x)

claim_match(["suffix", x], v) if endswith(v, x)

# waypoint_namespace_match is how a waypoint (Envoy's RBAC filter) matches a
# namespaces value against the peer's principal: Istio writes the value as
# the regular expression `.*/ns/<value>/.*`, every "*" becoming `.*`. So
# "a*c" matches namespace "abc", and, since `.*` spans "/", "*a" matches
# every Kubernetes identity (".../ns/foo/s" + "a/..."). ztunnel (L4)
# compares namespaces with string_match instead.
waypoint_namespace_match(pattern, principal) if {
	is_string(pattern)
	is_string(principal)
	literals := [quote_meta(part) | some part in split(pattern, "*")]
	regex.match(concat("", ["^.*/ns/", concat(".*", literals), "/.*$"]), principal)
}

# host_match is string_match ignoring case (hosts are case-insensitive).
host_match(pattern, host) if {
	is_string(pattern)
	is_string(host)
	string_match(lower(pattern), lower(host))
}

# path_match matches an Istio path pattern against an already-normalized
# url_path (input.request.url_path). Patterns holding "{*}" or "{**}" are
# URI templates, matched as Envoy's uri_template: "{*}" is one segment of
# one or more RFC 3986 pchar (but "*"), "{**}" any run of them and "/",
# possibly empty; literal segments may follow "{**}", operators may not.
# As in Envoy, the "/" around "{**}" is literal: "/a/{**}" matches "/a/"
# and "/a/b/c", not "/a"; "/store/{**}/cart" matches "/store//cart", not
# "/store/cart". A pattern that is not a valid template (an operator mixed
# with text in a segment, an operator after "{**}", any other "{...}") is a
# plain string_match, and so is a pattern without templates.
path_match(pattern, url_path) if {
	is_string(url_path)
	not is_path_template(pattern)
	string_match(pattern, url_path)
}

path_match(pattern, url_path) if {
	is_string(url_path)
	is_path_template(pattern)
	regex.match(template_regex(pattern), url_path)
}

# is_path_template holds for a valid template: it has an operator, every
# segment with braces is exactly one operator, and no operator follows
# "{**}".
is_path_template(pattern) if {
	is_string(pattern)
	contains(pattern, "{*")
	segments := split(pattern, "/")
	every segment in segments {
		template_segment_ok(segment)
	}
	not operator_after_any(segments)
}

template_segment_ok(segment) if {
	not contains(segment, "{")
	not contains(segment, "}")
}

template_segment_ok(segment) if segment in template_operators

template_operators := {"{*}", "{**}"}

operator_after_any(segments) if {
	some i, j
	segments[i] == "{**}"
	j > i
	segments[j] in template_operators
}

# template_regex is the anchored regular expression of a valid template,
# the one the translator writes.
template_regex(pattern) := concat("", ["^", concat("/", [segment_regex(s) | some s in split(pattern, "/")]), "$"])

# pchar is Envoy's literal set for path templates: RFC 3986 pchar but "*".
pchar := `a-zA-Z0-9\-._~%!$&'()+,;:@=`

segment_regex("{*}") := concat("", ["[", pchar, "]+"])

segment_regex("{**}") := concat("", ["[", pchar, "/]*"])

segment_regex(s) := quote_meta(s) if not s in template_operators

# quote_meta escapes the regular expression metacharacters of s.
quote_meta(s) := regex.replace(s, `([\\.+*?()|\[\]{}^$])`, `\$1`)
