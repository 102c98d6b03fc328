package mesh.policies.plain.p

allow contains {"policy": "plain/p", "rule": "0"} if input.source.namespace == "plain"
