# METADATA
# title: examples/db
# description: |
#   Postgres takes connections from the api service account, on 5433 only.
#   An L4 policy: it reads identities and ports, no request, so ztunnel can
#   enforce it without a waypoint.
package mesh.policies.examples.db

# allow_scope says this ALLOW policy selects the destination: from now on
# a connection to postgres is denied unless some allow entry matches it.
allow_scope contains {"policy": "examples/db"} if selected

allow contains {"policy": "examples/db", "rule": "api-only"} if {
	selected
	input.source.principal == "spiffe://cluster.local/ns/shop/sa/api"
	input.destination.port == 5433
}

selected if input.destination.labels.app == "postgres"
