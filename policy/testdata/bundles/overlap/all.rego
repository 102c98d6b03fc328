package mesh.policies.ops.all

audit contains {"policy": "ops/all", "rule": "0"} if true
