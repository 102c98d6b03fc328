package controller_test

import (
	"os"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/controller"
)

// A template that cannot make a waypoint is refused when it is parsed,
// saying why.
func TestParseWaypointTemplateRefuses(t *testing.T) {
	const service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: \"[[ .DeploymentName ]]\"}\n"
	const deployment = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: \"[[ .DeploymentName ]]\"}\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"syntax", deployment + service + "[[ .Name ", "unclosed action"},
		{"unknown field", deployment + service + "# [[ .Nmae ]]\n", "Nmae"},
		{"no Service", deployment, "no Deployment or no Service"},
		{"another kind", deployment + service + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "ServiceAccount, Deployment, Service"},
		{"another namespace", deployment + service + "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespace: kube-system}\n", "namespace kube-system"},
		{"no name", deployment + service + "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {}\n", "no metadata.name"},
		{"not YAML", deployment + service + "---\n{[\n", "object 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := controller.ParseWaypointTemplate(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseWaypointTemplate = %v; want an error saying %q", err, tc.want)
			}
		})
	}
	text, err := os.ReadFile("testdata/waypoint-template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := controller.ParseWaypointTemplate(string(text)); err != nil {
		t.Fatalf("the test template: %v", err)
	}
}
