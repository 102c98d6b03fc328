package istio_test

import (
	"errors"
	"strings"
	"testing"

	apiv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/policy/istio"
)

// peerDoc wraps a spec (written flush-left) in a PeerAuthentication in
// namespace shop whose spec starts on line 5.
func peerDoc(name, spec string) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n")
	b.WriteString("metadata: {name: " + name + ", namespace: shop}\nspec:\n")
	for _, line := range strings.Split(strings.TrimSpace(spec), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// TestPeerAuthenticationErrors: what Istio's validation refuses, and what
// does not decode, is an error naming the file, the line and the field.
func TestPeerAuthenticationErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
		kind error
	}{
		{name: "port level without selector", src: peerDoc("p", `
mtls: {mode: STRICT}
portLevelMtls:
  8080: {mode: PERMISSIVE}
`), kind: istio.ErrInvalid, want: `
pa.yaml:6: shop/p: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS: add a selector, or set spec.mtls
`},
		{name: "ports out of range", src: peerDoc("p", `
selector: {matchLabels: {app: api}}
portLevelMtls:
  0: {mode: STRICT}
  70000: {mode: STRICT}
`), kind: istio.ErrInvalid, want: `
pa.yaml:7: shop/p: spec.portLevelMtls.0: port must be in range 1..65535
pa.yaml:8: shop/p: spec.portLevelMtls.70000: port must be in range 1..65535
`},
		{name: "empty port level", src: peerDoc("p", `
selector: {matchLabels: {app: api}}
portLevelMtls: {}
`), kind: istio.ErrDecode, want: `
pa.yaml:6: shop/p: spec.portLevelMtls: port level mTLS, if defined, must have at least one element
`},
		{name: "unknown mode", src: peerDoc("p", `
mtls:
  mode: STRICTER
`), kind: istio.ErrDecode, want: `
pa.yaml:6: shop/p: spec.mtls.mode: "STRICTER" is not one of UNSET, DISABLE, PERMISSIVE, STRICT
`},
		{name: "unknown fields and a port name", src: peerDoc("p", `
selector: {matchLabels: {app: api}}
mtls: {mod: STRICT}
portLevelMtls:
  http: {mode: STRICT}
`), kind: istio.ErrDecode, want: `
pa.yaml:6: shop/p: spec.mtls.mod: unknown field (check its spelling against the PeerAuthentication reference)
pa.yaml:8: shop/p: spec.portLevelMtls.http: "http" is not a port number
`},
		{name: "wildcard selector", src: peerDoc("p", `
selector:
  matchLabels:
    app: "api-*"
mtls: {mode: STRICT}
`), kind: istio.ErrInvalid, want: `
pa.yaml:7: shop/p: spec.selector.matchLabels.app: wildcard is not supported in selector: "app=api-*"
`},
		{name: "defined twice", src: peerDoc("p", "mtls: {mode: STRICT}") + "---\n" + peerDoc("p", "mtls: {mode: PERMISSIVE}"),
			kind: istio.ErrInvalid, want: `
pa.yaml:7: shop/p: PeerAuthentication defined twice (first at pa.yaml:1)
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translateYAML(t, "pa.yaml", tt.src, istio.Options{})
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

// TestDecodeLeavesPeerAuthentications: Decode, for AuthorizationPolicies
// only, notes each PeerAuthentication it leaves to DecodeAll.
func TestDecodeLeavesPeerAuthentications(t *testing.T) {
	policies, notes, err := istio.Decode(strings.NewReader(peerDoc("strict", "mtls: {mode: STRICT}")), "pa.yaml")
	if err != nil || len(policies) != 0 {
		t.Fatalf("policies %v, error %v", policies, err)
	}
	if len(notes) != 1 || notes[0].String() != "pa.yaml:1: skipped PeerAuthentication shop/strict: read it with DecodeAll" {
		t.Errorf("notes %v", notes)
	}
}

func TestConvertPeerAuthentication(t *testing.T) {
	obj := &clientv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec: apiv1beta1.PeerAuthentication{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "api"}},
			Mtls:     &apiv1beta1.PeerAuthentication_MutualTLS{Mode: apiv1beta1.PeerAuthentication_MutualTLS_STRICT},
			PortLevelMtls: map[uint32]*apiv1beta1.PeerAuthentication_MutualTLS{
				8080: {Mode: apiv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE},
				9090: nil,
			},
		},
	}
	pa := istio.ConvertPeerAuthentication(obj)
	if pa.ID() != "shop/api" || pa.Mode != istio.ModeStrict || pa.Selector["app"] != "api" ||
		pa.PortLevel[8080] != istio.ModePermissive || pa.PortLevel[9090] != istio.ModeUnset {
		t.Errorf("converted %+v", pa)
	}
	if err := istio.ValidatePeerAuthentication(pa); err != nil {
		t.Error(err)
	}
}
