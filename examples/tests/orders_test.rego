package examples.orders_test

import data.mesh.authz

order(auth) := object.union(
	{
		"layer": "l7",
		"source": {"principal": "spiffe://cluster.local/ns/shop/sa/checkout", "namespace": "shop", "ip": "10.1.0.8", "port": 40122},
		"destination": {"ip": "10.1.0.9", "port": 8080, "namespace": "shop", "labels": {"app": "api"}},
		"connection": {"mtls": true},
		"request": {"method": "POST", "path": "/orders", "url_path": "/orders", "host": "api.shop"},
	},
	auth,
)

alice := {"request": {"auth": {"principal": "https://auth.shop.example/alice", "claims": {"sub": "alice"}}}}

test_order_without_a_user_denied if {
	d := authz.decision with input as order({})
	d.allow == false
	d.policy == "examples/orders"
	d.rule == "orders-need-a-user"
}

test_order_with_a_user_allowed if {
	d := authz.decision with input as order(alice)
	d.allow == true
}

test_reading_orders_needs_no_user if {
	d := authz.decision with input as json.patch(order({}), [{"op": "replace", "path": "/request/method", "value": "GET"}])
	d.allow == true
}
