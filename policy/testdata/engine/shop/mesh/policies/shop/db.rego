package mesh.policies.shop.db

# Postgres is selected by this ALLOW policy: only the api may connect, on 5432.
allow_scope contains {"policy": "shop/db"} if input.destination.labels.app == "postgres"

allow contains {"policy": "shop/db", "rule": "api-only"} if {
	input.destination.labels.app == "postgres"
	input.source.principal == "spiffe://td/ns/shop/sa/api"
	input.destination.port == 5432
}
