# A CUSTOM provider for the translator's tests: it allows requests that
# carry "x-ext-authz: allow", as an external authorizer configured that way
# would. CUSTOM AuthorizationPolicies with provider "ext-authz" ask it.
package mesh.providers["ext-authz"]

allow if input.request.headers["x-ext-authz"] == "allow"
