package mesh.policies.shop.db

# v2: the api lost access to postgres.
allow_scope contains {"policy": "shop/db"} if input.destination.labels.app == "postgres"

allow contains {"policy": "shop/db", "rule": "nobody"} if {
	input.destination.labels.app == "postgres"
	input.source.principal == "spiffe://td/ns/shop/sa/nobody"
}
