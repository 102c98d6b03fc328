package mesh.policies.db.main

deny contains {"policy": "db/main", "rule": "plaintext", "reason": "db requires mTLS"} if {
	input.destination.service_account == "db"
	not input.connection.mtls
}
