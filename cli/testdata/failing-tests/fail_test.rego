package failing_test

import data.mesh.authz

# Fails on purpose: no policy is loaded, so the decision allows.
test_everything_denied if {
	not authz.decision.allow with input as {"layer": "l4"}
}
