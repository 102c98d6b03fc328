package mesh.policies.y.stray

allow contains {"policy": "y/stray", "rule": "0"} if true
