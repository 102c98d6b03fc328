# METADATA
# title: examples/admin
# description: |
#   Only the frontend may call /admin, and only during the change window
#   (data.json: change_window, whole hours in UTC, start included, end
#   excluded; a window whose start is after its end wraps midnight).
#
#   The rules match input.request.url_path, the path the engine normalizes
#   (so "/catalog/../admin" is "/admin"), never the raw input.request.path.
package mesh.policies.examples.admin

frontend := "spiffe://cluster.local/ns/shop/sa/frontend"

deny contains {
	"policy": "examples/admin",
	"rule": "admin-only-frontend",
	"reason": "only the frontend may call /admin",
} if {
	admin_request
	not from_frontend
}

# change-window speaks for the frontend only: every other caller is already
# denied by admin-only-frontend, so each denial has one rule behind it and
# the decision for other callers does not depend on the clock.
deny contains {
	"policy": "examples/admin",
	"rule": "change-window",
	"reason": sprintf("/admin is open from %d:00 to %d:00 UTC", [window.start_hour, window.end_hour]),
} if {
	admin_request
	from_frontend
	not in_change_window
}

admin_request if {
	input.layer == "l7"
	startswith(input.request.url_path, "/admin")
}

# from_frontend is a rule so that `not from_frontend` holds for a plaintext
# peer, which has no source.principal: comparing the absent principal with
# != would be undefined, and the deny would not fire.
from_frontend if input.source.principal == frontend

window := data.mesh.policies.examples.admin.change_window

in_change_window if {
	[hour, _, _] := time.clock([time.now_ns(), "UTC"])
	within(hour, window.start_hour, window.end_hour)
}

within(hour, start, end) if {
	start <= end
	start <= hour
	hour < end
}

within(hour, start, end) if {
	start > end
	hour >= start
}

within(hour, start, end) if {
	start > end
	hour < end
}
