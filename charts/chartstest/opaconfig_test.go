package chartstest

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/regomesh/regomesh/policy/opabundles"
)

// TestOPAConfig: policy.opaConfig reaches ztunnel and every waypoint as a
// mounted ConfigMap passed as --opa-config, and the file rendered is one
// the binaries accept (the parser --opa-config uses); without it, no
// container is given the flag.
func TestOPAConfig(t *testing.T) {
	for _, set := range valueSets {
		vals := values(t, set)
		policy, _ := vals["policy"].(map[string]any)
		configured := policy["opaConfig"] != nil
		objs := objects(t, "regomesh", vals)
		for _, cm := range find[*corev1.ConfigMap](objs, "") {
			if !strings.HasSuffix(cm.Name, "opa-config") {
				continue
			}
			if _, err := opabundles.ParseConfig([]byte(cm.Data["config.yaml"])); err != nil {
				t.Errorf("%s: ConfigMap %s/%s: the binaries would refuse config.yaml: %v", set, cm.Namespace, cm.Name, err)
			}
		}
		for _, o := range objs {
			spec := podSpecOf(o)
			if spec == nil {
				continue
			}
			for _, c := range spec.Spec.Containers {
				if c.Name != "ztunnel" && c.Name != "waypoint" {
					continue
				}
				path, given := argMap(c.Args)["opa-config"]
				if given != configured || (given && (path != "/etc/regomesh/opa/config.yaml" || !mountedAt(c, "/etc/regomesh/opa"))) {
					t.Errorf("%s: %s: --opa-config=%q (given: %t, mounted: %t), want it iff policy.opaConfig is set (%t), mounted from its ConfigMap",
						set, kindName(o), path, given, mountedAt(c, "/etc/regomesh/opa"), configured)
				}
			}
		}
	}
}

func mountedAt(c corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return true
		}
	}
	return false
}
