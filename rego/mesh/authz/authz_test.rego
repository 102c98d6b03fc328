package mesh.authz_test

import data.mesh.authz

# decide is the decision with policies as the whole of data.mesh.policies,
# so these tests do not depend on any other package loaded next to them.
decide(policies) := d if {
	d := authz.decision with data.mesh.policies as policies
}

# pkg builds one policy package's contributions: {"owner": {"name": sets}}.
pkg(owner, name, sets) := {owner: {name: sets}}

no_policy := "no ALLOW policy selects the destination"

test_no_contributions_allows if {
	decide({}) == {"allow": true, "policy": "", "rule": "", "reason": no_policy, "audit": []}
}

test_empty_packages_allow if {
	decide(pkg("a", "x", {"deny": [], "allow": [], "allow_scope": []})) == {
		"allow": true, "policy": "", "rule": "", "reason": no_policy, "audit": [],
	}
}

test_other_package_keys_are_ignored if {
	d := decide(pkg("a", "x", {"change_window": {"start_hour": 9}, "denied": [{"policy": "a/x"}]}))
	d.allow == true
	d.reason == no_policy
}

test_deny_denies_with_its_reason if {
	d := decide(pkg("a", "x", {"deny": [{"policy": "a/x", "rule": "r", "reason": "nope"}]}))
	d == {"allow": false, "policy": "a/x", "rule": "r", "reason": "nope", "audit": []}
}

test_deny_overrides_allow if {
	d := decide(object.union(
		pkg("a", "x", {"allow": [{"policy": "a/x", "rule": "0"}], "allow_scope": [{"policy": "a/x"}]}),
		pkg("b", "y", {"deny": [{"policy": "b/y", "rule": "1"}]}),
	))
	d.allow == false
	d.policy == "b/y"
	d.rule == "1"
	d.reason == "denied by DENY policy"
}

test_custom_deny_before_deny if {
	d := decide(pkg("a", "x", {
		"deny": [{"policy": "a/deny", "rule": "0"}],
		"custom_deny": [{"policy": "a/custom", "rule": "ext-authz"}],
	}))
	d.allow == false
	d.policy == "a/custom"
	d.rule == "ext-authz"
	d.reason == "denied by CUSTOM policy"
}

test_allow_scope_without_allow_denies_naming_the_policies if {
	d := decide(object.union(
		pkg("istio", "ns-b-web", {"allow_scope": [{"policy": "b/web"}]}),
		pkg("istio", "ns-a-all", {"allow_scope": [{"policy": "a/all"}]}),
	))
	d == {
		"allow": false, "policy": "", "rule": "", "audit": [],
		"reason": "no ALLOW policy matched; selecting the destination: a/all, b/web",
	}
}

test_allow_match_allows_naming_policy_and_rule if {
	d := decide(pkg("istio", "b-web", {
		"allow_scope": [{"policy": "b/web"}],
		"allow": [{"policy": "b/web", "rule": "2"}],
	}))
	d == {"allow": true, "policy": "b/web", "rule": "2", "reason": "allowed by ALLOW policy", "audit": []}
}

test_allow_without_scope_allows if {
	d := decide(pkg("a", "x", {"allow": [{"policy": "a/x", "rule": "r", "reason": "trusted"}]}))
	d == {"allow": true, "policy": "a/x", "rule": "r", "reason": "trusted", "audit": []}
}

test_allow_from_another_policy_satisfies_scope if {
	d := decide(object.union(
		pkg("istio", "one", {"allow_scope": [{"policy": "b/one"}]}),
		pkg("istio", "two", {"allow_scope": [{"policy": "b/two"}], "allow": [{"policy": "b/two", "rule": "0"}]}),
	))
	d.allow == true
	d.policy == "b/two"
}

test_smallest_deny_decides if {
	# The packages iterate z before a in no defined order; the entries' order
	# decides: policy "a/p" < "b/p", and rule "0" < "1" within a policy.
	d := decide(object.union(
		pkg("z", "z", {"deny": [{"policy": "b/p", "rule": "0"}, {"policy": "a/p", "rule": "1"}]}),
		pkg("a", "a", {"deny": [{"policy": "a/p", "rule": "0"}]}),
	))
	d.policy == "a/p"
	d.rule == "0"
}

test_smallest_allow_decides if {
	d := decide(pkg("a", "x", {"allow": [
		{"policy": "ns/web", "rule": "3"},
		{"policy": "ns/api", "rule": "7"},
		{"policy": "ns/api", "rule": "1"},
	]}))
	d.policy == "ns/api"
	d.rule == "1"
}

test_same_input_same_decision if {
	policies := pkg("a", "x", {"deny": [{"policy": "a/x", "rule": "r1"}, {"policy": "a/x", "rule": "r2"}]})
	decide(policies) == decide(policies)
	decide(policies).rule == "r1"
}

test_audit_is_listed_and_never_changes_allow if {
	d := decide(pkg("a", "x", {"audit": [{"policy": "a/audit", "rule": "0"}]}))
	d == {"allow": true, "policy": "", "rule": "", "reason": no_policy, "audit": [{"policy": "a/audit", "rule": "0"}]}
}

test_audit_listed_with_a_deny if {
	d := decide(pkg("a", "x", {
		"deny": [{"policy": "a/deny", "rule": "0"}],
		"audit": [{"policy": "a/audit", "rule": "0"}],
	}))
	d.allow == false
	d.audit == [{"policy": "a/audit", "rule": "0"}]
}

test_audit_sorted_and_stripped if {
	d := decide(pkg("a", "x", {"audit": [
		{"policy": "b/audit", "rule": "0", "reason": "dropped"},
		{"policy": "a/audit", "rule": "1"},
	]}))
	d.audit == [{"policy": "a/audit", "rule": "1"}, {"policy": "b/audit", "rule": "0"}]
}

test_audit_missing_rule_defaulted if {
	d := decide(pkg("a", "x", {"audit": [{"policy": "a/audit"}]}))
	d.audit == [{"policy": "a/audit", "rule": ""}]
}

test_dry_run_deny_not_enforced_but_reported if {
	d := decide(pkg("a", "x", {"deny": [{"policy": "a/x", "rule": "0", "dry_run": true}]}))
	d.allow == true
	d.reason == no_policy
	d.dry_run == {"allow": false, "policy": "a/x", "rule": "0", "reason": "denied by DENY policy"}
}

test_dry_run_allow_scope_not_enforced_but_reported if {
	d := decide(pkg("a", "x", {"allow_scope": [{"policy": "a/x", "dry_run": true}]}))
	d.allow == true
	d.dry_run.allow == false
	d.dry_run.reason == "no ALLOW policy matched; selecting the destination: a/x"
}

test_dry_run_sees_enforced_entries_too if {
	d := decide(pkg("a", "x", {
		"custom_deny": [{"policy": "a/custom", "rule": "0", "dry_run": true}],
		"deny": [{"policy": "a/deny", "rule": "0"}],
	}))
	d.policy == "a/deny"
	d.dry_run.policy == "a/custom"
}

test_dry_run_absent_without_dry_run_entries if {
	d := decide(pkg("a", "x", {"deny": [{"policy": "a/x", "rule": "0", "dry_run": false}]}))
	d.allow == false
	not "dry_run" in object.keys(d)
}

test_dry_run_audit_not_listed if {
	d := decide(pkg("a", "x", {"audit": [{"policy": "a/audit", "rule": "0", "dry_run": true}]}))
	d.audit == []
	d.allow == true
}

test_missing_rule_and_reason_defaulted if {
	decide(pkg("a", "x", {"deny": [{"policy": "a/x"}]})) == {
		"allow": false, "policy": "a/x", "rule": "", "reason": "denied by DENY policy", "audit": [],
	}
	decide(pkg("a", "x", {"custom_deny": [{"policy": "a/x"}]})).reason == "denied by CUSTOM policy"
	decide(pkg("a", "x", {"allow": [{"policy": "a/x"}]})) == {
		"allow": true, "policy": "a/x", "rule": "", "reason": "allowed by ALLOW policy", "audit": [],
	}
}

test_malformed_deny_entries_still_deny if {
	# A classic OPA string message, or an entry without "policy", must never
	# fail open, even when it sorts before a well-formed entry.
	decide(pkg("a", "x", {"deny": ["classic message"]})).allow == false
	decide(pkg("a", "x", {"deny": [{"rule": "r"}]})).allow == false
	decide(object.union(
		pkg("a", "x", {"deny": ["classic message"]}),
		pkg("b", "y", {"deny": [{"policy": "b/y", "rule": "0"}]}),
	)).allow == false
	decide(pkg("a", "x", {"custom_deny": [42]})).allow == false
}

test_decision_is_set_for_any_input if {
	d := authz.decision with data.mesh.policies as {} with input as {"layer": "l7", "request": {"url_path": "/"}}
	d.allow == true
}
