package mesh.policies.typed.p

allow contains {"policy": "typed/p", "rule": "0"} if {
	# count of a number is a type error the compiler reports here, line 5.
	count(input.destination.port + 1) > 0
}
