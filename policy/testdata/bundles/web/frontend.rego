package mesh.policies.web.frontend

# Only namespaces listed in data.mesh.policies.web.config may reach web.
allow_scope contains {"policy": "web/frontend"} if {
	input.destination.service_account == "web"
}

allow contains {"policy": "web/frontend", "rule": "0"} if {
	input.destination.service_account == "web"
	input.source.namespace in data.mesh.policies.web.config.namespaces
}
