package istio_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regomesh/regomesh/policy/istio"
)

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{name: "unknown field", src: policyDoc("p", `
rules:
- from:
  - source:
      principles: ["a"]
`), want: "d.yaml:8: default/p: spec.rules[0].from[0].source.principles: unknown field (check its spelling against the AuthorizationPolicy reference)"},
		{name: "wrong types", src: policyDoc("p", `
action: BLOCK
selector:
  matchLabels: {version: 2}
rules:
- from:
  - source:
      principals: "a"
  to: {operation: {}}
`), want: "d.yaml:5: default/p: spec.action: \"BLOCK\" is not one of ALLOW, DENY, AUDIT, CUSTOM\nd.yaml:7: default/p: spec.selector.matchLabels.version: expected a string (quote numbers and booleans)\nd.yaml:11: default/p: spec.rules[0].from[0].source.principals: expected a list\nd.yaml:12: default/p: spec.rules[0].to: expected a list"},
		{name: "empty from and to", src: policyDoc("p", `
rules:
- from: []
  to: []
`), want: "d.yaml:6: default/p: spec.rules[0].from: must not be empty: remove it to match any source\nd.yaml:7: default/p: spec.rules[0].to: must not be empty: remove it to match any operation"},
		{name: "null rule and entries", src: policyDoc("p", `
rules:
- null
- from: [null]
`), want: "d.yaml:6: default/p: spec.rules[0]: null rule: write {} for a rule that matches everything\nd.yaml:7: default/p: spec.rules[1].from[0]: must not be null"},
		{name: "missing source and operation", src: policyDoc("p", `
rules:
- from:
  - {}
  to:
  - operation: null
`), want: "d.yaml:7: default/p: spec.rules[0].from[0].source: required: each from entry needs a source\nd.yaml:9: default/p: spec.rules[0].to[0].operation: required: each to entry needs an operation"},
		{name: "dry-run annotation", src: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: default
  annotations: {istio.io/dry-run: "yes"}
`, want: "d.yaml:6: default/p: metadata.annotations[istio.io/dry-run]: \"yes\" is not a boolean: use \"true\" or \"false\""},
		{name: "apiVersion", src: `apiVersion: security.istio.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p}
`, want: "d.yaml:1: document 0: apiVersion security.istio.io/v1alpha1: expected security.istio.io/v1 or security.istio.io/v1beta1"},
		{name: "missing name", src: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop}
`, want: "d.yaml:3: shop/: metadata.name: required"},
		{name: "YAML syntax", src: policyDoc("ok", "{}") + "---\nkind: [a\n", want: "d.yaml:7: document 1: YAML: did not find expected ',' or ']'"},
		{name: "not an object", src: "---\n- a\n- b\n", want: "d.yaml:2: document 1: the document: expected a Kubernetes object (a mapping with apiVersion and kind)"},
		{name: "duplicate keys", src: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: DENY
  action: ALLOW
`, want: "d.yaml:6: document 0: YAML: key \"action\" already set in map"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := istio.Decode(strings.NewReader(tt.src), "d.yaml")
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, istio.ErrDecode) {
					t.Errorf("error does not wrap ErrDecode: %v", err)
				}
			}
			if got != strings.TrimSpace(tt.want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, strings.TrimSpace(tt.want))
			}
		})
	}
}

func TestDecodeNotes(t *testing.T) {
	src := `# policies and other things
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
---
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-namespace}
spec:
  action: DENY
  rules: [{}]
---
kind: Unknown
`
	policies, notes, err := istio.Decode(strings.NewReader(src), "n.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range notes {
		got = append(got, n.String())
	}
	want := []string{
		"n.yaml:2: document 0: skipped Service (v1) shop/web: not an AuthorizationPolicy, a PeerAuthentication or a RequestAuthentication",
		`n.yaml:7: document 2: AuthorizationPolicy no-namespace has no metadata.namespace: translated in namespace "default"`,
		"n.yaml:14: document 3: skipped Unknown: not an AuthorizationPolicy, a PeerAuthentication or a RequestAuthentication",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("notes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(policies) != 1 || policies[0].ID() != "default/no-namespace" || policies[0].Origin != "n.yaml:7" {
		t.Errorf("policies: %+v", policies)
	}
}

func TestConvert(t *testing.T) {
	obj := &clientv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Annotations: map[string]string{"istio.io/dry-run": "true"}},
	}
	obj.Spec.Action = apiv1beta1.AuthorizationPolicy_DENY
	obj.Spec.Rules = []*apiv1beta1.Rule{{
		From: []*apiv1beta1.Rule_From{{Source: &apiv1beta1.Source{Namespaces: []string{"a"}}}},
		To:   []*apiv1beta1.Rule_To{{Operation: &apiv1beta1.Operation{Ports: []string{"80"}}}},
		When: []*apiv1beta1.Condition{{Key: "source.ip", Values: []string{"10.0.0.0/8"}}},
	}}
	p, err := istio.Convert(obj)
	if err != nil {
		t.Fatal(err)
	}
	want := &istio.Policy{Namespace: "shop", Name: "p", Action: istio.Deny, DryRun: true, Rules: []istio.Rule{{
		From: []istio.Source{{Namespaces: []string{"a"}}},
		To:   []istio.Operation{{Ports: []string{"80"}}},
		When: []istio.Condition{{Key: "source.ip", Values: []string{"10.0.0.0/8"}}},
	}}}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("Convert:\n%+v\nwant:\n%+v", p, want)
	}

	obj.Spec.Rules = []*apiv1beta1.Rule{nil, {From: []*apiv1beta1.Rule_From{{}}}}
	_, err = istio.Convert(obj)
	const wantErr = "shop/p: spec.rules[0]: null rule: use {} for a rule that matches everything\n" +
		"shop/p: spec.rules[1].from[0].source: required: each from entry needs a source"
	if err == nil || err.Error() != wantErr || !errors.Is(err, istio.ErrDecode) {
		t.Errorf("Convert error:\n%v\nwant:\n%s", err, wantErr)
	}
}
