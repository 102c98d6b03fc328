# Tests live outside data.mesh.policies: a rule there that reads
# data.mesh.authz.decision would be part of the decision it reads (a
# recursion error). Leave *_test.rego out of the built bundle:
# opa build -b examples/bundle --ignore '*_test.rego'.
package examples.admin_test

import data.mesh.authz
import data.mesh.policies.examples.admin

frontend := "spiffe://cluster.local/ns/shop/sa/frontend"

checkout := "spiffe://cluster.local/ns/shop/sa/checkout"

at(hh_mm) := time.parse_rfc3339_ns(sprintf("2025-06-02T%s:00Z", [hh_mm]))

request(principal, url_path) := {
	"layer": "l7",
	"source": {"principal": principal, "namespace": "shop", "ip": "10.1.0.5", "port": 40122},
	"destination": {"ip": "10.1.0.9", "port": 8080, "namespace": "shop", "labels": {"app": "web"}},
	"connection": {"mtls": true},
	"request": {"method": "GET", "path": url_path, "url_path": url_path, "host": "web.shop"},
}

plaintext(url_path) := json.remove(request("", url_path), ["source/principal"])

rules(deny) := {d.rule | some d in deny}

test_frontend_admin_in_window_allowed if {
	t := at("10:00")
	admin.deny == set() with input as request(frontend, "/admin/users") with time.now_ns as t
	d := authz.decision with input as request(frontend, "/admin/users") with time.now_ns as t
	d.allow == true
}

test_frontend_admin_outside_window_denied if {
	t := at("20:30")
	d := authz.decision with input as request(frontend, "/admin/users") with time.now_ns as t
	d.allow == false
	d.policy == "examples/admin"
	d.rule == "change-window"
	d.reason == "/admin is open from 9:00 to 17:00 UTC"
}

test_window_start_included_end_excluded if {
	admin.in_change_window with time.now_ns as at("09:00")
	admin.in_change_window with time.now_ns as at("16:59")
	not admin.in_change_window with time.now_ns as at("17:00")
	not admin.in_change_window with time.now_ns as at("08:59")
}

test_window_can_wrap_midnight if {
	night := {"start_hour": 22, "end_hour": 6}
	admin.in_change_window with time.now_ns as at("23:00") with admin.window as night
	admin.in_change_window with time.now_ns as at("05:59") with admin.window as night
	not admin.in_change_window with time.now_ns as at("06:00") with admin.window as night
	not admin.in_change_window with time.now_ns as at("12:00") with admin.window as night
}

test_other_caller_admin_denied_at_any_time if {
	rules(admin.deny) == {"admin-only-frontend"} with input as request(checkout, "/admin") with time.now_ns as at("10:00")
	rules(admin.deny) == {"admin-only-frontend"} with input as request(checkout, "/admin") with time.now_ns as at("23:00")
	d := authz.decision with input as request(checkout, "/admin/users") with time.now_ns as at("10:00")
	d.allow == false
	d.rule == "admin-only-frontend"
	d.reason == "only the frontend may call /admin"
}

test_plaintext_admin_denied if {
	rules(admin.deny) == {"admin-only-frontend"} with input as plaintext("/admin") with time.now_ns as at("10:00")
}

test_normalized_path_is_matched if {
	# The engine derives url_path from path; the policy reads url_path only.
	req := json.patch(request(checkout, "/admin"), [{"op": "replace", "path": "/request/path", "value": "/catalog/../admin"}])
	rules(admin.deny) == {"admin-only-frontend"} with input as req with time.now_ns as at("10:00")
}

test_other_paths_allowed_at_any_time if {
	admin.deny == set() with input as request(checkout, "/catalog") with time.now_ns as at("23:00")
	admin.deny == set() with input as request(frontend, "/catalog") with time.now_ns as at("23:00")
	d := authz.decision with input as request(checkout, "/catalog") with time.now_ns as at("23:00")
	d.allow == true
	d.reason == "no ALLOW policy selects the destination"
}

test_l4_is_not_affected if {
	admin.deny == set() with input as json.remove(request(checkout, "/admin"), ["request"]) with input.layer as "l4"
}
