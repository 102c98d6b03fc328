# METADATA
# title: examples/orders
# description: |
#   Placing an order (POST /orders) needs a signed-in user: a JWT that the
#   waypoint validated against a RequestAuthentication, which puts it in
#   input.request.auth. A request without a token reaches policy with no
#   request.auth (RequestAuthentication lets it pass); a request with a bad
#   token never does (the waypoint answers 401 itself).
package mesh.policies.examples.orders

deny contains {
	"policy": "examples/orders",
	"rule": "orders-need-a-user",
	"reason": "POST /orders needs a signed-in user (a valid JWT)",
} if {
	input.layer == "l7"
	input.request.method == "POST"
	input.request.url_path == "/orders"
	not signed_in
}

signed_in if input.request.auth.principal != ""
