package mesh.authz_test

import data.mesh.authz

# string_match

test_string_match_exact if {
	authz.string_match("GET", "GET")
	not authz.string_match("GET", "GETX")
	not authz.string_match("GET", "get")
}

test_string_match_star_is_any_non_empty if {
	authz.string_match("*", "x")
	not authz.string_match("*", "")
}

test_string_match_prefix if {
	authz.string_match("/api/*", "/api/v1")
	authz.string_match("/api/*", "/api/")
	not authz.string_match("/api/*", "/apx/v1")
}

test_string_match_suffix if {
	authz.string_match("*.svc", "web.svc")
	authz.string_match("*.svc", ".svc")
	not authz.string_match("*.svc", "web.svc.local")
}

test_string_match_middle_star_is_literal if {
	authz.string_match("a*b", "a*b")
	not authz.string_match("a*b", "axb")
}

test_string_match_leading_star_wins if {
	# As in Istio, "*abc*" is the suffix "abc*", not a "contains".
	authz.string_match("*abc*", "xabc*")
	not authz.string_match("*abc*", "xabcx")
}

test_string_match_empty_pattern_is_exact if {
	authz.string_match("", "")
	not authz.string_match("", "x")
}

test_string_match_non_strings_never_match if {
	not authz.string_match("*", 1)
	not authz.string_match("*", null)
	not authz.string_match(1, 1)
	not authz.string_match("1", 1)
	not authz.string_match("*", ["x"])
}

# An absent attribute never matches. In Rego an undefined argument makes
# the whole expression undefined, even under "not", so policies test absent
# attributes through a rule like this one, and negate the rule.
source_has_principal if authz.string_match("*", input.source.principal)

test_string_match_absent_value_never_matches if {
	not source_has_principal with input as {"source": {}}
	not source_has_principal with input as {"source": {"principal": ""}}
	source_has_principal with input as {"source": {"principal": "spiffe://td/ns/a/sa/x"}}
}

# any_match

test_any_match if {
	authz.any_match(["GET", "HEAD"], "HEAD")
	authz.any_match({"/a", "/b*"}, "/b/c")
	not authz.any_match(["GET", "HEAD"], "POST")
	not authz.any_match([], "GET")
}

# principal_match

test_principal_match_without_scheme if {
	authz.principal_match("td/ns/a/sa/x", "spiffe://td/ns/a/sa/x")
	not authz.principal_match("td/ns/a/sa/y", "spiffe://td/ns/a/sa/x")
}

test_principal_match_suffix if {
	authz.principal_match("*/sa/x", "spiffe://td/ns/a/sa/x")
	not authz.principal_match("*/sa/x", "spiffe://td/ns/a/sa/xy")
}

source_is_any_principal if authz.principal_match("*", input.source.principal)

test_principal_match_star_needs_a_principal if {
	authz.principal_match("*", "spiffe://td/ns/a/sa/x")
	not authz.principal_match("*", "")
	not source_is_any_principal with input as {"source": {"ip": "10.0.0.1"}}
}

test_principal_match_pattern_with_scheme if {
	authz.principal_match("spiffe://td/ns/a/sa/x", "spiffe://td/ns/a/sa/x")
}

# host_match

test_host_match_ignores_case if {
	authz.host_match("Web.B.svc", "web.b.SVC")
	authz.host_match("*.EXAMPLE.com", "api.example.COM")
	not authz.host_match("web.b", "web.c")
	not authz.host_match("*", 80)
}

# path_match

test_path_match_without_template_is_string_match if {
	authz.path_match("/admin", "/admin")
	authz.path_match("/admin*", "/admin/users")
	authz.path_match("*/users", "/admin/users")
	not authz.path_match("/admin", "/admin/")
}

test_path_match_one_segment if {
	authz.path_match("/users/{*}/orders", "/users/42/orders")
	not authz.path_match("/users/{*}/orders", "/users/42/7/orders")
	not authz.path_match("/users/{*}/orders", "/users//orders")
	not authz.path_match("/users/{*}/orders", "/users/orders")
}

test_path_match_one_segment_at_end if {
	authz.path_match("/users/{*}", "/users/42")
	not authz.path_match("/users/{*}", "/users/")
	not authz.path_match("/users/{*}", "/users/42/orders")
}

test_path_match_many_segments if {
	authz.path_match("/static/{**}", "/static/a/b/c.css")
	authz.path_match("/static/{**}", "/static/x")
	authz.path_match("/static/{**}", "/static/")
	not authz.path_match("/static/{**}", "/static")
	not authz.path_match("/static/{**}", "/statics/x")
}

test_path_match_root_many if {
	authz.path_match("/{**}", "/")
	authz.path_match("/{**}", "/a/b")
}

test_path_match_mixed_operators if {
	authz.path_match("/{*}/v1/{**}", "/shop/v1/orders/9")
	not authz.path_match("/{*}/v1/{**}", "/shop/v2/orders/9")
}

test_path_match_literals_after_many_segments if {
	# Istio's path templating test: "{**}" may be followed by literals.
	authz.path_match("/store/{**}/cart", "/store//cart")
	authz.path_match("/store/{**}/cart", "/store/foo/cart")
	authz.path_match("/store/{**}/cart", "/store/foo/bar/cart")
	not authz.path_match("/store/{**}/cart", "/store/cart")
	not authz.path_match("/store/{**}/cart", "/store/foo/cart/x")
}

test_path_match_operators_take_pchar_only if {
	not authz.path_match("/users/{*}", "/users/a*b")
	not authz.path_match("/users/{*}", "/users/a b")
	authz.path_match("/users/{*}", "/users/a%20b")
	authz.path_match("/a.b/{*}", "/a.b/x")
	not authz.path_match("/a.b/{*}", "/aXb/x")
}

test_path_match_invalid_template_is_string_match if {
	# An operator after "{**}": not a template, so the pattern is a literal.
	authz.path_match("/{**}/{*}", "/{**}/{*}")
	not authz.path_match("/{**}/{*}", "/a/b")

	# An operator mixed with text in a segment: literal, as an exact match.
	authz.path_match("/a{*}", "/a{*}")
	not authz.path_match("/a{*}", "/ab")

	# A trailing "*" keeps its prefix meaning.
	authz.path_match("/{*}x*", "/{*}xyz")
}

test_path_match_is_case_sensitive if {
	not authz.path_match("/Admin", "/admin")
	not authz.path_match("/{*}/Admin", "/x/admin")
}

request_path_is_x if authz.path_match("/x", input.request.url_path)

test_path_match_non_string_path if {
	not authz.path_match("*", null)
	not authz.path_match("/{**}", 7)
	not request_path_is_x with input as {"layer": "l4"}
}

# request_principal_match: split at the last "/", as Istio 1.22 does.

test_request_principal_match_exact if {
	authz.request_principal_match("https://issuer.example/alice", "https://issuer.example/alice")
	not authz.request_principal_match("https://issuer.example/alice", "https://issuer.example/bob")
}

test_request_principal_match_trailing_star_is_a_subject_prefix if {
	authz.request_principal_match("https://issuer.exa*", "https://issuer.example")
	not authz.request_principal_match("https://issuer.exa*", "https://issuer.example/alice")
	authz.request_principal_match("foo/bar*", "foo/barbaz")
	not authz.request_principal_match("foo/bar*", "foo/bar/baz")
}

test_request_principal_match_any_subject if {
	authz.request_principal_match("foo/*", "foo/x")
	not authz.request_principal_match("foo/*", "foo/")
	not authz.request_principal_match("foo/*", "foo/x/y")
}

test_request_principal_match_star_needs_issuer_and_subject if {
	authz.request_principal_match("*", "iss/sub")
	not authz.request_principal_match("*", "iss/")
	not authz.request_principal_match("*", "/sub")
	not authz.request_principal_match("*", "nosubject")
}

test_request_principal_match_without_slash if {
	# "foo*": issuer prefix "foo", any subject; "*foo": any issuer, subject suffix "foo".
	authz.request_principal_match("foo*", "foobar/x")
	not authz.request_principal_match("foo*", "foobar/")
	authz.request_principal_match("*foo", "iss/xfoo")
	not authz.request_principal_match("*foo", "iss/foo/x")

	# "foo": issuer "foo", empty subject.
	authz.request_principal_match("foo", "foo/")
	not authz.request_principal_match("foo", "foo")
}

test_request_principal_match_leading_star_is_an_issuer_suffix if {
	authz.request_principal_match("*bar/foo", "https://bar/foo")
	not authz.request_principal_match("*bar/foo", "https://bar/foox")
	authz.request_principal_match("*/foo", "iss/foo")
	not authz.request_principal_match("*/foo", "/foo")
}

test_request_principal_match_non_strings_never_match if {
	not authz.request_principal_match("*", null)
	not authz.request_principal_match(1, "a/b")
}

# waypoint_namespace_match: Envoy's regular expression over the principal.

test_waypoint_namespace_match_exact if {
	authz.waypoint_namespace_match("ns.prod", "spiffe://cluster.local/ns/ns.prod/sa/admin")
	not authz.waypoint_namespace_match("ns.prod", "spiffe://cluster.local/ns/nsXprod/sa/admin")
}

test_waypoint_namespace_match_star_anywhere if {
	authz.waypoint_namespace_match("a*c", "spiffe://td/ns/abc/sa/x")
	authz.waypoint_namespace_match("ns.*.prod", "spiffe://td/ns/ns.any.prod/sa/x")
	not authz.waypoint_namespace_match("ns.*.prod", "spiffe://td/ns/nsXanyXprod/sa/x")
	not authz.waypoint_namespace_match("a*c", "spiffe://td/ns/abd/sa/x")
}

test_waypoint_namespace_match_star_spans_slashes if {
	# As in Istio, `.*` spans "/sa": "*a" matches namespace "shop".
	authz.waypoint_namespace_match("*a", "spiffe://td/ns/shop/sa/x")
	not authz.string_match("*a", "shop")
}

test_waypoint_namespace_match_plaintext_never_matches if {
	not authz.waypoint_namespace_match("*", null)
}
