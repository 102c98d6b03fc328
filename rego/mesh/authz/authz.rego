# METADATA
# title: regomesh authorization library
# description: |
#   Combines the contributions of every policy package into one decision.
#   Policy packages live at data.mesh.policies.<owner>.<name> (exactly two
#   levels: the owner is usually the bundle, e.g. "istio" for translated
#   AuthorizationPolicies) and contribute to these sets:
#
#     custom_deny  CUSTOM step denials           {"policy", "rule", "reason"?}
#     deny         DENY matches                  {"policy", "rule", "reason"?}
#     allow        ALLOW matches                 {"policy", "rule", "reason"?}
#     allow_scope  ALLOW policies selecting the  {"policy"}
#                  destination (enables default-deny)
#     audit        AUDIT matches (marks only)    {"policy", "rule"}
#
#   A point may also be a boolean rule (`deny if { ... }`): true contributes
#   one entry {"policy": "<owner>/<name>", "rule": "<point>"}.
#   Any entry with "dry_run": true is evaluated and reported in
#   decision.dry_run, never enforced; every other entry is enforced.
package mesh.authz

# points names the contribution sets, in evaluation order.
points := ["custom_deny", "deny", "allow", "allow_scope", "audit"]

# contributions[point] is the union of every package's entries for point.
contributions[point] := {entry |
	some owner, name
	doc := data.mesh.policies[owner][name][point]
	some entry in package_entries(doc, owner, name, point)
} if some point in points

# package_entries is what doc, the value of point in the package
# data.mesh.policies[owner][name], contributes: the elements of a set (or
# array, or the values of an object), or one entry for any other value but
# false.
package_entries(doc, owner, name, point) := {e | some e in doc} if {
	is_collection(doc)
} else := {{"policy": concat("/", [owner, name]), "rule": point}} if {
	doc != false
} else := set()

is_collection(x) if is_set(x)

is_collection(x) if is_array(x)

is_collection(x) if is_object(x)

# enforced[point] holds the entries that take effect: all but dry-run ones.
enforced[point] := {entry |
	some entry in contributions[point]
	not dry_run(entry)
} if some point in points

dry_run(entry) if entry.dry_run == true

# decision is the answer for input: {"allow", "policy", "rule", "reason"},
# plus "audit" (AUDIT matches, never changes allow) and, when a dry-run entry
# matched, "dry_run": the verdict had dry-run policies been enforced.
decision := object.union(verdict(enforced), {"audit": audit}) if not has_dry_run

decision := object.union_n([verdict(enforced), {"audit": audit}, {"dry_run": verdict(contributions)}]) if has_dry_run

audit := [{"policy": field(a, "policy", ""), "rule": field(a, "rule", "")} | some a in sort(enforced.audit)]

has_dry_run if {
	some point in points
	some entry in contributions[point]
	dry_run(entry)
}

# verdict applies the mesh's order: CUSTOM, then DENY (deny overrides), then
# ALLOW (allow if applicable: when an ALLOW policy selects the destination,
# one must match). Among several matches the smallest entry (in Rego's
# ordering of values) decides, so the answer is deterministic. Every branch
# is total: a malformed entry still denies, it never falls through to allow.
verdict(sets) := denied(sort(sets.custom_deny)[0], "denied by CUSTOM policy") if {
	count(sets.custom_deny) > 0
} else := denied(sort(sets.deny)[0], "denied by DENY policy") if {
	count(sets.deny) > 0
} else := no_allow_matched(sets.allow_scope) if {
	count(sets.allow_scope) > 0
	count(sets.allow) == 0
} else := decided(true, sort(sets.allow)[0], "allowed by ALLOW policy") if {
	count(sets.allow) > 0
} else := {"allow": true, "policy": "", "rule": "", "reason": "no ALLOW policy selects the destination"}

denied(entry, why) := decided(false, entry, why)

decided(allow, entry, why) := {
	"allow": allow,
	"policy": field(entry, "policy", ""),
	"rule": field(entry, "rule", ""),
	"reason": field(entry, "reason", why),
}

no_allow_matched(scope) := {
	"allow": false,
	"policy": "",
	"rule": "",
	"reason": concat("", [
		"no ALLOW policy matched; selecting the destination: ",
		concat(", ", sort({name(s) | some s in scope})),
	]),
}

# field is entry[key], or def when entry has no such key (or is not an object).
field(entry, key, def) := entry[key] if is_object(entry)

else := def

name(entry) := entry.policy if is_string(entry.policy)

else := sprintf("%v", [entry])
