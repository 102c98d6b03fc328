package istio_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy/istio"
)

// policyDoc wraps a spec (written flush-left) in an AuthorizationPolicy
// document whose spec starts on line 5.
func policyDoc(name, spec string) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n")
	b.WriteString("metadata: {name: " + name + ", namespace: default}\nspec:\n")
	for _, line := range strings.Split(strings.TrimSpace(spec), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		src  string
		opts istio.Options
		want string
	}{
		{name: "empty source", src: policyDoc("p", `
rules:
- from:
  - source: {}
`), want: `
v.yaml:7: default/p: spec.rules[0].from[0].source: must not be empty: set at least one of principals, namespaces, serviceAccounts, trustDomains, ipBlocks, remoteIpBlocks, requestPrincipals or their not-forms
`},
		{name: "empty operation", src: policyDoc("p", `
rules:
- to:
  - operation: {}
`), want: `
v.yaml:7: default/p: spec.rules[0].to[0].operation: must not be empty: set at least one of hosts, ports, methods, paths or their not-forms
`},
		{name: "empty strings", src: policyDoc("p", `
rules:
- from:
  - source:
      principals: ["a", ""]
      notNamespaces: [""]
  to:
  - operation:
      hosts: [""]
`), want: `
v.yaml:8: default/p: spec.rules[0].from[0].source.principals[1]: empty string
v.yaml:9: default/p: spec.rules[0].from[0].source.notNamespaces[0]: empty string
v.yaml:12: default/p: spec.rules[0].to[0].operation.hosts[0]: empty string
`},
		{name: "ports", src: policyDoc("p", `
rules:
- to:
  - operation:
      ports: ["80x", "65536", "443"]
      notPorts: ["-1"]
`), want: `
v.yaml:8: default/p: spec.rules[0].to[0].operation.ports[0]: "80x" is not a port (an integer from 0 to 65535)
v.yaml:8: default/p: spec.rules[0].to[0].operation.ports[1]: "65536" is not a port (an integer from 0 to 65535)
v.yaml:9: default/p: spec.rules[0].to[0].operation.notPorts[0]: "-1" is not a port (an integer from 0 to 65535)
`},
		{name: "IPs and CIDRs", src: policyDoc("p", `
rules:
- from:
  - source:
      ipBlocks: ["10.0.0.0/33", "10.1.0.0/16"]
      notRemoteIpBlocks: ["300.1.1.1"]
`), want: `
v.yaml:8: default/p: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not a CIDR range
v.yaml:9: default/p: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: "300.1.1.1" is not an IP address
`},
		{name: "when keys and values", src: policyDoc("p", `
rules:
- when:
  - key: request.foo
    values: ["x"]
  - key: destination.namespace
    values: ["x"]
  - key: source.ip
  - key: request.headers[]
    values: ["a"]
  - key: request.auth.claims[a]b
    values: ["a"]
  - key: destination.ip
    values: ["10.0.0.1/40"]
  - key: source.serviceAccount
    notValues: ["a/b/c"]
  - key: ""
    values: ["x"]
  - key: destination.port
    notValues: ["http"]
`), want: `
v.yaml:7: default/p: spec.rules[0].when[0].key: unknown attribute "request.foo": expected one of source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, destination.ip, destination.port, connection.sni, request.headers[<name>], request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[<name>]
v.yaml:9: default/p: spec.rules[0].when[1].key: attribute destination.namespace is replaced by the metadata.namespace
v.yaml:11: default/p: spec.rules[0].when[2]: at least one of values or notValues must be set for key source.ip
v.yaml:12: default/p: spec.rules[0].when[3].key: bad key "request.headers[]": expected request.headers[<name>]
v.yaml:14: default/p: spec.rules[0].when[4].key: bad key "request.auth.claims[a]b": expected request.auth.claims[<name>] or request.auth.claims[<name>][<nested name>]
v.yaml:17: default/p: spec.rules[0].when[5].values[0]: "10.0.0.1/40" is not a CIDR range
v.yaml:19: default/p: spec.rules[0].when[6].notValues[0]: "a/b/c": expected format 'serviceAccount' or 'namespace/serviceAccount'
v.yaml:20: default/p: spec.rules[0].when[7].key: required
v.yaml:23: default/p: spec.rules[0].when[8].notValues[0]: "http" is not a port (an integer from 0 to 65535)
`},
		{name: "serviceAccounts with principals", src: policyDoc("p", `
rules:
- from:
  - source:
      principals: ["a"]
      notServiceAccounts: ["b"]
`), want: `
v.yaml:7: default/p: spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals
`},
		{name: "serviceAccounts format", src: policyDoc("p", `
rules:
- from:
  - source:
      serviceAccounts: ["shop/*", "a/b/c", "/sa", "ns/"]
`), want: `
v.yaml:8: default/p: spec.rules[0].from[0].source.serviceAccounts[0]: "shop/*": wildcard not allowed
v.yaml:8: default/p: spec.rules[0].from[0].source.serviceAccounts[1]: "a/b/c": expected format 'serviceAccount' or 'namespace/serviceAccount'
v.yaml:8: default/p: spec.rules[0].from[0].source.serviceAccounts[2]: "/sa": expected format 'serviceAccount' or 'namespace/serviceAccount'
v.yaml:8: default/p: spec.rules[0].from[0].source.serviceAccounts[3]: "ns/": expected format 'serviceAccount' or 'namespace/serviceAccount'
`},
		{name: "selector and targetRefs", src: policyDoc("p", `
selector:
  matchLabels: {app: "web*"}
targetRefs:
- {kind: Service, name: web}
`), want: `
v.yaml:4: default/p: spec: only one of targetRefs or selector can be set
v.yaml:6: default/p: spec.selector.matchLabels.app: wildcard is not supported in selector: "app=web*"
`},
		{name: "targetRefs", src: policyDoc("p", `
targetRefs:
- {kind: Service, name: web, namespace: other}
- {kind: ServiceEntry, group: networking.istio.io, name: se}
- {kind: Deployment, group: apps, name: d}
- {kind: Gateway, group: gateway.networking.k8s.io}
`), want: `
v.yaml:6: default/p: spec.targetRefs[0].namespace: must not be set; cross namespace referencing is not supported
v.yaml:7: default/p: spec.targetRefs[1]: targetRef to a ServiceEntry is not supported: the translator does not know its hosts; target the waypoint's Gateway instead
v.yaml:8: default/p: spec.targetRefs[2]: targetRef must be to a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io), found "apps"/"Deployment"
v.yaml:9: default/p: spec.targetRefs[3].name: required
`},
		{name: "DENY without rules", src: policyDoc("p", `
action: DENY
`), want: "v.yaml:4: default/p: spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"},
		{name: "CUSTOM without rules or provider", src: policyDoc("p", `
action: CUSTOM
`), want: "v.yaml:4: default/p: spec.rules: CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request\nv.yaml:4: default/p: spec.provider.name: required for action CUSTOM"},
		{name: "CUSTOM with identity fields", opts: istio.Options{Providers: []string{"ext-authz"}}, src: policyDoc("p", `
action: CUSTOM
provider: {name: ext-authz}
rules:
- from:
  - source:
      principals: ["a"]
      notRequestPrincipals: ["b"]
      ipBlocks: ["10.0.0.0/8"]
  when:
  - key: request.auth.claims[iss]
    values: ["x"]
  - key: source.namespace
    values: ["x"]
`), want: `
v.yaml:10: default/p: spec.rules[0].from[0].source.principals: principals is currently not supported with CUSTOM action
v.yaml:11: default/p: spec.rules[0].from[0].source.notRequestPrincipals: notRequestPrincipals is currently not supported with CUSTOM action
v.yaml:14: default/p: spec.rules[0].when[0].key: request.auth.claims[iss] is currently not supported with CUSTOM action
v.yaml:16: default/p: spec.rules[0].when[1].key: source.namespace is currently not supported with CUSTOM action
`},
		{name: "CUSTOM with trustDomains", opts: istio.Options{Providers: []string{"ext-authz"}}, src: policyDoc("p", `
action: CUSTOM
provider: {name: ext-authz}
rules:
- from:
  - source:
      notTrustDomains: ["td"]
`), want: `
v.yaml:10: default/p: spec.rules[0].from[0].source.notTrustDomains: notTrustDomains is currently not supported with CUSTOM action
`},
		{name: "provider with ALLOW", src: policyDoc("p", `
provider: {name: ext-authz}
rules:
- {}
`), want: `
v.yaml:5: default/p: spec.provider: must not be set with action ALLOW: only CUSTOM policies have a provider
`},
		{name: "path templates", src: policyDoc("p", `
rules:
- to:
  - operation:
      paths: ["/a/{**}/{*}", "/a/{x}", "/a/{*}.txt", "/a/{*}/b c", "/ok/{*}/x/{**}"]
      notPaths: ["/a/{**}/b/{**}"]
`), want: `
v.yaml:8: default/p: spec.rules[0].to[0].operation.paths[0]: invalid path template "/a/{**}/{*}": {**} must be the last operator
v.yaml:8: default/p: spec.rules[0].to[0].operation.paths[1]: invalid path "/a/{x}": '{' or '}' outside a {*} or {**} segment
v.yaml:8: default/p: spec.rules[0].to[0].operation.paths[2]: invalid path "/a/{*}.txt": '{' or '}' outside a {*} or {**} segment
v.yaml:8: default/p: spec.rules[0].to[0].operation.paths[3]: invalid path template "/a/{*}/b c": segment "b c" has characters outside RFC 3986 pchar
v.yaml:9: default/p: spec.rules[0].to[0].operation.notPaths[0]: invalid path template "/a/{**}/b/{**}": {**} must be the last operator
`},
		{name: "metadata", src: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: "Bad_Name", namespace: "Shop"}
spec: {}
`, want: `
v.yaml:3: Shop/Bad_Name: metadata.namespace: "Shop" is not a Kubernetes namespace name (a DNS-1123 label: lower-case letters, digits and '-')
v.yaml:3: Shop/Bad_Name: metadata.name: "Bad_Name" is not a Kubernetes object name (a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')
`},
		{name: "defined twice", src: policyDoc("p", "{}") + "---\n" + policyDoc("p", "{}"), want: `
v.yaml:7: default/p: defined twice (first at v.yaml:1)
`},
		{name: "valid", src: policyDoc("p", `
rules:
- from:
  - source:
      serviceAccounts: ["shop/frontend", "api"]
  to:
  - operation:
      paths: ["/items/{*}/reviews/{**}"]
      ports: ["0", "65535"]
  when:
  - key: request.auth.claims[a][b]
    values: ["x"]
`), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translateYAML(t, "v.yaml", tt.src, tt.opts)
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, istio.ErrInvalid) {
					t.Errorf("error does not wrap ErrInvalid: %v", err)
				}
			}
			if got != strings.TrimSpace(tt.want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, strings.TrimSpace(tt.want))
			}
		})
	}
}
