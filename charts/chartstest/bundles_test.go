package chartstest

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestControllerBundles: the controller serves its bundles on 15013,
// signed with the key of policy.signingKeySecret (mounted read-only) when
// one is given, else unsigned, as the values say: never a controller that
// refuses to start for want of either.
func TestControllerBundles(t *testing.T) {
	for _, set := range valueSets {
		objs := objects(t, "regomesh", values(t, set))
		spec := one[*appsv1.Deployment](t, objs, "regomesh-controller").Spec.Template.Spec
		c := spec.Containers[0]
		args := argMap(c.Args)
		if args["bundle-addr"] != ":15013" {
			t.Errorf("%s: --bundle-addr=%q, want :15013", set, args["bundle-addr"])
		}
		secret := str(values(t, set), "policy", "signingKeySecret", "")
		if secret == "" {
			if _, unsigned := args["bundle-unsigned"]; !unsigned || args["bundle-signing-key"] != "" {
				t.Errorf("%s: no signing key configured, yet args %v do not serve bundles unsigned", set, c.Args)
			}
			continue
		}
		want := map[string]string{
			"bundle-signing-key":       "/etc/regomesh/bundle-signing/signing.pem",
			"bundle-signing-key-id":    str(values(t, set), "policy", "signingKeyID", "regomesh"),
			"bundle-signing-algorithm": str(values(t, set), "policy", "signingAlgorithm", "RS256"),
		}
		for flag, v := range want {
			if args[flag] != v {
				t.Errorf("%s: --%s=%q, want %q", set, flag, args[flag], v)
			}
		}
		if _, unsigned := args["bundle-unsigned"]; unsigned {
			t.Errorf("%s: signed and --bundle-unsigned", set)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.MountPath == "/etc/regomesh/bundle-signing" && m.ReadOnly && volumeSecret(spec, m.Name) == secret)
		}
		if !mounted {
			t.Errorf("%s: Secret %s not mounted read-only at /etc/regomesh/bundle-signing", set, secret)
		}
	}
}

func volumeSecret(spec corev1.PodSpec, name string) string {
	for _, v := range spec.Volumes {
		if v.Name == name && v.Secret != nil {
			return v.Secret.SecretName
		}
	}
	return ""
}
