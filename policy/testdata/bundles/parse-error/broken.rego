package mesh.policies.broken.bad

allow contains {"policy": "broken/bad", "rule": "0"} if {
	input.source.namespace == == "a"
}
