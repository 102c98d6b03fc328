package istio_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy/istio"
)

// requestDoc wraps a spec (written flush-left) in a RequestAuthentication
// in namespace shop whose spec starts on line 5.
func requestDoc(name, spec string) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n")
	b.WriteString("metadata: {name: " + name + ", namespace: shop}\nspec:\n")
	for _, line := range strings.Split(strings.TrimSpace(spec), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// TestRequestAuthenticationDecodes: every field a waypoint uses arrives,
// and the translation names the resource in a warning (it is enforced by
// waypoints, not by the bundle).
func TestRequestAuthenticationDecodes(t *testing.T) {
	src := requestDoc("jwt", `
targetRefs: [{kind: Service, group: "", name: web}]
jwtRules:
- issuer: https://issuer.test
  jwksUri: https://issuer.test/jwks
  audiences: [web, api]
  fromHeaders: [{name: x-jwt, prefix: "Token "}]
  fromParams: [tok]
  forwardOriginalToken: true
  outputPayloadToHeader: x-payload
  outputClaimToHeaders: [{header: x-sub, claim: sub}]
`)
	res, _, err := istio.DecodeAll(strings.NewReader(src), "ra.yaml")
	if err != nil || len(res.RequestAuthentications) != 1 {
		t.Fatalf("DecodeAll: %v, %d RequestAuthentications", err, len(res.RequestAuthentications))
	}
	ra := res.RequestAuthentications[0]
	r := ra.JWTRules[0]
	if ra.ID() != "shop/jwt" || ra.Origin != "ra.yaml:1" || len(ra.TargetRefs) != 1 || ra.TargetRefs[0].Name != "web" ||
		r.Issuer != "https://issuer.test" || r.JWKSURI != "https://issuer.test/jwks" || strings.Join(r.Audiences, ",") != "web,api" ||
		len(r.FromHeaders) != 1 || r.FromHeaders[0] != (istio.JWTHeader{Name: "x-jwt", Prefix: "Token "}) ||
		strings.Join(r.FromParams, ",") != "tok" || !r.ForwardOriginalToken || r.OutputPayloadToHeader != "x-payload" ||
		len(r.OutputClaimToHeaders) != 1 || r.OutputClaimToHeaders[0] != (istio.ClaimToHeader{Header: "x-sub", Claim: "sub"}) {
		t.Errorf("decoded %+v, rule %+v", ra, r)
	}
	res.AuthorizationPolicies, _, _ = istio.Decode(strings.NewReader(
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {}\n"), "ap.yaml")
	tr, err := istio.TranslateAll(res, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var warned bool
	for _, w := range tr.Warnings {
		warned = warned || (w.Policy == "shop/jwt" && strings.Contains(w.Message, "waypoints validate its JWTs"))
	}
	if !warned || len(tr.Modules) != 1 {
		t.Errorf("warnings %v, %d modules; want one module and a warning naming shop/jwt", tr.Warnings, len(tr.Modules))
	}
}

// TestRequestAuthenticationErrors: what Istio's validation refuses, and
// what does not decode, is an error naming the file, the line and the
// field.
func TestRequestAuthenticationErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
		kind            error
	}{
		{name: "rules", src: requestDoc("r", `
jwtRules:
- jwksUri: https://a.test/jwks
- issuer: b.test
  jwksUri: ftp://b.test/jwks
  fromHeaders: [{prefix: "Bearer "}]
  fromParams: [""]
- issuer: b.test
  jwks: "{}"
  outputClaimToHeaders: [{header: "bad header", claim: ""}]
`), kind: istio.ErrInvalid, want: `
ra.yaml:6: shop/r: spec.jwtRules[0].issuer: issuer must be set
ra.yaml:8: shop/r: spec.jwtRules[1].jwksUri: URL "ftp://b.test/jwks": scheme must be https, http or file
ra.yaml:9: shop/r: spec.jwtRules[1].fromHeaders[0].name: location header name must be non-empty
ra.yaml:10: shop/r: spec.jwtRules[1].fromParams[0]: location query must be non-empty
ra.yaml:11: shop/r: spec.jwtRules[2].issuer: issuer "b.test" is already configured by spec.jwtRules[1]
ra.yaml:13: shop/r: spec.jwtRules[2].outputClaimToHeaders[0].header: invalid header name "bad header"
ra.yaml:13: shop/r: spec.jwtRules[2].outputClaimToHeaders[0].claim: claim must be non-empty
`},
		{name: "selector and targetRefs", src: requestDoc("r", `
selector: {matchLabels: {app: web}}
targetRefs: [{kind: Service, group: "", name: web}]
jwtRules: [{issuer: a.test, jwksUri: "file:///etc/jwks.json"}]
`), kind: istio.ErrInvalid, want: `
ra.yaml:4: shop/r: spec: only one of targetRefs or selector can be set
`},
		{name: "unknown field", src: requestDoc("r", `
jwtRules: [{issuer: a.test, jwks_url: x}]
`), kind: istio.ErrDecode, want: `
ra.yaml:5: shop/r: spec.jwtRules[0].jwks_url: unknown field (check its spelling against the RequestAuthentication reference)
`},
		{name: "defined twice", src: requestDoc("r", "jwtRules: [{issuer: a.test, jwks: x}]") + "---\n" + requestDoc("r", "jwtRules: []"),
			kind: istio.ErrInvalid, want: `
ra.yaml:7: shop/r: RequestAuthentication defined twice (first at ra.yaml:1)
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translateYAML(t, "ra.yaml", tt.src, istio.Options{})
			if err == nil {
				t.Fatal("no error")
			}
			if got, want := err.Error(), strings.TrimSpace(tt.want); got != want {
				t.Errorf("error:\n%s\nwant:\n%s", got, want)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("error is not %v", tt.kind)
			}
		})
	}
}

// TestRequestAuthenticationAppliesTo: the attachment rules are
// AuthorizationPolicy's, seen from a waypoint.
func TestRequestAuthenticationAppliesTo(t *testing.T) {
	web := map[string]string{"app": "web"}
	const svc = "web.shop.svc.cluster.local"
	for _, tc := range []struct {
		name, spec, namespace string
		dstNS, service        string
		labels                map[string]string
		want                  bool
	}{
		{"namespace-wide, same namespace", "jwtRules: []", "shop", "shop", "", nil, true},
		{"namespace-wide, other namespace", "jwtRules: []", "shop", "other", "", nil, false},
		{"root namespace: mesh-wide", "jwtRules: []", "istio-system", "other", "", nil, true},
		{"selector matches", "selector: {matchLabels: {app: web}}", "shop", "shop", "", web, true},
		{"selector, a service has no labels", "selector: {matchLabels: {app: web}}", "shop", "shop", svc, nil, false},
		{"root selector, any namespace", "selector: {matchLabels: {app: web}}", "istio-system", "other", "", web, true},
		{"targetRef Service", `targetRefs: [{kind: Service, group: "", name: web}]`, "shop", "shop", svc, nil, true},
		{"targetRef other Service", `targetRefs: [{kind: Service, group: "", name: api}]`, "shop", "shop", svc, nil, false},
		{"targetRef this waypoint", `targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]`, "shop", "other", "", nil, true},
		{"targetRef another waypoint", `targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp2}]`, "shop", "shop", "", nil, false},
		{"GatewayClass from root", `targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]`, "istio-system", "x", "", nil, true},
		{"GatewayClass elsewhere", `targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]`, "shop", "shop", "", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(requestDoc("r", tc.spec), "namespace: shop", "namespace: "+tc.namespace, 1)
			res, _, err := istio.DecodeAll(strings.NewReader(src), "ra.yaml")
			if err != nil {
				t.Fatal(err)
			}
			got := res.RequestAuthentications[0].AppliesTo(istio.Options{}, "shop/waypoint", tc.dstNS, tc.labels, tc.service)
			if got != tc.want {
				t.Errorf("AppliesTo = %v, want %v", got, tc.want)
			}
		})
	}
}
