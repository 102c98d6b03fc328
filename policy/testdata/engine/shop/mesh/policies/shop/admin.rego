package mesh.policies.shop.admin

deny contains {"policy": "shop/admin", "rule": 0, "reason": "only the frontend may call /admin"} if {
	input.layer == "l7"
	startswith(input.request.url_path, "/admin")
	input.source.principal != "spiffe://td/ns/shop/sa/frontend"
}

deny contains {"policy": "shop/admin", "rule": 1} if {
	net.cidr_contains("192.0.2.0/24", input.source.ip)
}

audit contains {"policy": "shop/admin", "rule": "watch-db"} if input.destination.labels.app == "postgres"
