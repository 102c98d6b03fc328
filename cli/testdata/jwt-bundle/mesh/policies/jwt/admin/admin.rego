package mesh.policies.jwt.admin

# Only admins (by JWT group claim) may call /admin.
deny contains {"policy": "jwt/admin", "rule": "admins-only"} if {
	startswith(input.request.url_path, "/admin")
	not is_admin
}

is_admin if "admins" in input.request.auth.claims.groups
