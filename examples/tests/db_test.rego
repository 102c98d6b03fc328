# Tests live outside data.mesh.policies (see admin_test.rego).
package examples.db_test

import data.mesh.authz

api := "spiffe://cluster.local/ns/shop/sa/api"

frontend := "spiffe://cluster.local/ns/shop/sa/frontend"

connection(principal, app, port) := {
	"layer": "l4",
	"source": {"principal": principal, "namespace": "shop", "service_account": "x", "ip": "10.1.0.5", "port": 40122},
	"destination": {"ip": "10.1.0.20", "port": port, "namespace": "shop", "labels": {"app": app}},
	"connection": {"mtls": true},
}

test_api_to_postgres_allowed if {
	d := authz.decision with input as connection(api, "postgres", 5432)
	d == {"allow": true, "policy": "examples/db", "rule": "api-only", "reason": "allowed by ALLOW policy", "audit": []}
}

test_other_port_denied if {
	d := authz.decision with input as connection(api, "postgres", 5433)
	d.allow == false
	d.reason == "no ALLOW policy matched; selecting the destination: examples/db"
}

test_other_caller_denied if {
	d := authz.decision with input as connection(frontend, "postgres", 5432)
	d.allow == false
	d.reason == "no ALLOW policy matched; selecting the destination: examples/db"
}

test_plaintext_denied if {
	doc := json.patch(connection(api, "postgres", 5432), [
		{"op": "remove", "path": "/source/principal"},
		{"op": "replace", "path": "/connection/mtls", "value": false},
	])
	d := authz.decision with input as doc
	d.allow == false
}

test_other_destinations_not_selected if {
	d := authz.decision with input as connection(frontend, "redis", 6379)
	d.allow == true
	d.reason == "no ALLOW policy selects the destination"
	data.mesh.policies.examples.db.allow == set() with input as connection(api, "redis", 5432)
}
