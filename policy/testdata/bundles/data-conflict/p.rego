package mesh.policies.c.p

allow contains {"policy": "c/p", "rule": "0"} if true
