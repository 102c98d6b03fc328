package mesh.policies.broken.ok

allow contains {"policy": "broken/ok", "rule": "0"} if true
