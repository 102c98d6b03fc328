package controller

import (
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

const denyAdmin = `package mesh.policies.shop.admin

deny contains {"policy": "shop/admin", "rule": "no-admin"} if input.destination.port == 9000
`

// testRegoNamespaces may add Rego in these tests.
var testRegoNamespaces = []string{"shop", "my-app", "bank", "istio", "istio-system"}

func configMap(ns, name, uid, version string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), ResourceVersion: version}, Data: data}
}

// TestUserRegoRules: what a ConfigMap may add, each refusal with what it
// says, and the ConfigMap's other modules left out with it.
func TestUserRegoRules(t *testing.T) {
	tests := []struct {
		name string
		cm   *corev1.ConfigMap
		want string // the error's words; "" for accepted
	}{
		{"accepted", configMap("shop", "rego", "u", "1", map[string]string{"admin.rego": denyAdmin, "README.md": "not Rego"}), ""},
		{"quoted namespace", configMap("my-app", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies[\"my-app\"].a\n\ndeny if input.destination.port == 1\n"}), ""},
		{"deeper package", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.shop.a.helpers\n\nx := 1\n"}), ""},
		{"parse error", configMap("shop", "rego", "u", "1", map[string]string{"admin.rego": "package mesh.policies.shop.admin\n\ndeny if {\n"}), "admin.rego:"},
		{"another namespace's package", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.bank.a\n\ndeny if true\n"}), `must be in a package under mesh.policies["shop"].<name>`},
		{"translated package", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.istio.a\n\ndeny if true\n"}), "must be in a package under"},
		{"library package", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.authz\n\nx := 1\n"}), "must be in a package under"},
		{"owner only", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.shop\n\nx := 1\n"}), "must be in a package under"},
		{"reserved namespace", configMap("istio", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.istio.a\n\ndeny if true\n"}), "owner of translated policies"},
		{"docs/user-rego.md's example", configMap("istio-system", "rego", "u", "1", map[string]string{"guard.rego": "package mesh.policies[\"istio-system\"].guard\n\ndeny contains {\"policy\": \"istio-system/guard\", \"rule\": \"no-debug\", \"reason\": \"the debug port is closed\"} if {\n\tinput.destination.namespace == \"shop\"\n\tinput.destination.port == 6060\n}\n"}), ""},
		{"namespace not listed", configMap("tenant", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.tenant.a\n\nallow if true\n"}), "namespace tenant may not add Rego: Rego decides for the whole mesh, so it is taken only from the namespaces --rego-configmap-namespaces lists (shop, my-app, bank, istio, istio-system)"},
		{"no module", configMap("shop", "rego", "u", "1", map[string]string{"a.txt": "x"}), "no key ending in .rego"},
		{"compile error", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.shop.a\n\ndeny if x == 1\n"}), "var x is unsafe"},
		{"contract", configMap("shop", "rego", "u", "1", map[string]string{"a.rego": "package mesh.policies.shop.a.b\n\ndeny if true\n"}), "exactly two levels below mesh.policies"},
		{"one bad module refuses all", configMap("shop", "rego", "u", "1", map[string]string{"admin.rego": denyAdmin, "b.rego": "package mesh.policies.shop.b\n\ndeny if {\n"}), "b.rego:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			modules, problems, refused := newRegoStore(testRegoNamespaces).modules(t.Context(), []*corev1.ConfigMap{tt.cm})
			if tt.want == "" {
				if len(problems) != 0 || len(refused) != 0 {
					t.Fatalf("refused: %v", problems)
				}
				var want []string
				for k := range tt.cm.Data {
					if strings.HasSuffix(k, ".rego") {
						want = append(want, "mesh/policies/"+tt.cm.Namespace+"/rego/"+k)
					}
				}
				if got := slices.Sorted(maps.Keys(modules)); !slices.Equal(got, want) {
					t.Errorf("modules %v; want %v", got, want)
				}
				return
			}
			if len(modules) != 0 {
				t.Errorf("modules %v added", slices.Sorted(maps.Keys(modules)))
			}
			if len(problems) != 1 || len(refused) != 1 || problems[0].Kind != "ConfigMap" || !strings.Contains(problems[0].Err.Error(), tt.want) {
				t.Fatalf("problems %v; want one saying %q", problems, tt.want)
			}
			if refused[0].cm != tt.cm || refused[0].err != problems[0].Err {
				t.Errorf("refusal %v; want the ConfigMap's problem", refused[0])
			}
		})
	}
}

// TestUserRegoLastGood: a broken edit keeps the last good version; a
// package another ConfigMap (first by name) holds is refused, the
// holder's untouched; deletion removes.
func TestUserRegoLastGood(t *testing.T) {
	s := newRegoStore(testRegoNamespaces)
	ctx := t.Context()
	good := configMap("shop", "a", "ua", "1", map[string]string{"admin.rego": denyAdmin})
	modules, problems, _ := s.modules(ctx, []*corev1.ConfigMap{good})
	if len(problems) != 0 || modules["mesh/policies/shop/a/admin.rego"] != denyAdmin {
		t.Fatalf("modules %v, problems %v", modules, problems)
	}
	broken := configMap("shop", "a", "ua", "2", map[string]string{"admin.rego": "package mesh.policies.shop.admin\n\ndeny if {\n"})
	modules, problems, _ = s.modules(ctx, []*corev1.ConfigMap{broken})
	if len(problems) != 1 || problems[0].KeptVersion != "1" || !strings.Contains(problems[0].String(), "(resourceVersion 1 stays in force)") {
		t.Fatalf("problems %v; want the broken version refused, resourceVersion 1 kept", problems)
	}
	if modules["mesh/policies/shop/a/admin.rego"] != denyAdmin {
		t.Fatalf("modules %v; want the last good version", modules)
	}
	// The same name under a new UID is another ConfigMap: nothing kept.
	modules, problems, _ = s.modules(ctx, []*corev1.ConfigMap{configMap("shop", "a", "ua2", "3", broken.Data)})
	if len(modules) != 0 || len(problems) != 1 || problems[0].KeptVersion != "" {
		t.Fatalf("modules %v, problems %v; want nothing kept for a new object", modules, problems)
	}
	// Two ConfigMaps declaring one package: the first by name keeps it.
	first := configMap("shop", "a", "ua3", "4", map[string]string{"admin.rego": denyAdmin})
	second := configMap("shop", "b", "ub", "5", map[string]string{"admin.rego": denyAdmin, "other.rego": "package mesh.policies.shop.other\n\nallow if true\n"})
	modules, problems, _ = s.modules(ctx, []*corev1.ConfigMap{second, first})
	if got := slices.Sorted(maps.Keys(modules)); !slices.Equal(got, []string{"mesh/policies/shop/a/admin.rego"}) {
		t.Errorf("modules %v; want a's alone", got)
	}
	if len(problems) != 1 || problems[0].Name != "b" || !strings.Contains(problems[0].Err.Error(), "ConfigMap shop/a declares mesh.policies.shop.admin") {
		t.Errorf("problems %v; want b refused for a's package", problems)
	}
	// A package below another's is the same conflict.
	below := configMap("shop", "c", "uc", "6", map[string]string{"x.rego": "package mesh.policies.shop.admin.helpers\n\nx := 1\n"})
	if _, problems, _ = s.modules(ctx, []*corev1.ConfigMap{first, below}); len(problems) != 1 || problems[0].Name != "c" {
		t.Errorf("problems %v; want c refused", problems)
	}
	// Another namespace's package of the same name is its own.
	bank := configMap("bank", "a", "ubank", "7", map[string]string{"admin.rego": strings.ReplaceAll(denyAdmin, "shop", "bank")})
	if modules, problems, _ = s.modules(ctx, []*corev1.ConfigMap{first, bank}); len(problems) != 0 || len(modules) != 2 {
		t.Errorf("modules %v, problems %v; want both", slices.Sorted(maps.Keys(modules)), problems)
	}
	if modules, _, _ = s.modules(ctx, nil); len(modules) != 0 || len(s.good) != 0 || len(s.seen) != 0 {
		t.Errorf("deleted ConfigMaps still held: modules %v, good %v, seen %v", modules, s.good, s.seen)
	}
}

// TestRegoSelectorRefused: New refuses a selector that does not parse,
// pointing to the docs, rather than watching no ConfigMap.
func TestRegoSelectorRefused(t *testing.T) {
	_, err := New(&rest.Config{Host: "https://127.0.0.1:1"}, Config{RegoSelector: "regomesh.io/rego in (true"})
	if err == nil || !strings.Contains(err.Error(), "docs/user-rego.md") {
		t.Fatalf("New = %v; want the selector refused, naming docs/user-rego.md", err)
	}
	if _, err := New(&rest.Config{Host: "https://127.0.0.1:1"}, Config{}); err != nil {
		t.Fatalf("New with the default selector: %v", err)
	}
}
