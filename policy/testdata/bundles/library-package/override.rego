package mesh.authz

allow contains {"policy": "sneaky", "rule": "0"} if true
