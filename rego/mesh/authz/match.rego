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

# host_match is string_match ignoring case (hosts are case-insensitive).
host_match(pattern, host) if {
	is_string(pattern)
	is_string(host)
	string_match(lower(pattern), lower(host))
}

# path_match matches an Istio path pattern against an already-normalized
# url_path (input.request.url_path). Patterns holding "{*}" or "{**}" are
# URI templates: "{*}" is exactly one non-empty segment, "{**}" zero or more
# segments and only as the last segment. As in Envoy's URI templates, the
# "/" before "{**}" is literal: "/a/{**}" matches "/a/" and "/a/b/c", not
# "/a". A pattern that is not a valid template (an operator mixed with text
# in a segment, "{**}" before the end, any other "{...}") is a plain
# string_match, and so is a pattern without templates.
path_match(pattern, url_path) if {
	is_string(url_path)
	not is_path_template(pattern)
	string_match(pattern, url_path)
}

path_match(pattern, url_path) if {
	is_string(url_path)
	is_path_template(pattern)
	template_match(split(pattern, "/"), split(url_path, "/"))
}

# is_path_template holds for a valid template: it has an operator, every
# segment with braces is exactly one operator, and "{**}" only comes last.
is_path_template(pattern) if {
	is_string(pattern)
	contains(pattern, "{*")
	segments := split(pattern, "/")
	last := count(segments) - 1
	every i, segment in segments {
		template_segment_ok(segment, i == last)
	}
}

template_segment_ok(segment, _) if {
	not contains(segment, "{")
	not contains(segment, "}")
}

template_segment_ok("{*}", _)

template_segment_ok("{**}", true)

# template_match: without "{**}" the path has exactly the template's
# segments; with it, the segments before it and at least one more, possibly
# empty (the "/" before "{**}" is literal), whatever follows.
template_match(template, segments) if {
	template[count(template) - 1] != "{**}"
	count(segments) == count(template)
	segments_match(template, segments)
}

template_match(template, segments) if {
	template[count(template) - 1] == "{**}"
	count(segments) >= count(template)
	segments_match(array.slice(template, 0, count(template) - 1), segments)
}

# segments_match compares template[i] to segments[i] for every i in template.
segments_match(template, segments) if {
	every i, want in template {
		segment_match(want, segments[i])
	}
}

segment_match("{*}", segment) if segment != ""

segment_match(want, segment) if {
	want != "{*}"
	want == segment
}
