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

// TestProxyBundles: without policy.opaConfig, ztunnel and every waypoint
// download their bundles from the controller's bundle server (its
// Service, controller.bundlePort), verified with the public key when the
// controller signs and accepted unsigned when it does not, so the
// defaults make proxies that start and become ready; the proxies verify
// with the algorithm the controller signs with.
func TestProxyBundles(t *testing.T) {
	for _, set := range valueSets {
		vals := values(t, set)
		policy, _ := vals["policy"].(map[string]any)
		fromController := policy["opaConfig"] == nil
		signed := str(vals, "policy", "signingKeySecret", "") != ""
		url := "https://regomesh-controller.regomesh-system.svc." + str(vals, "global", "clusterDomain", "cluster.local") + ":15013"
		for _, o := range objects(t, "regomesh", vals) {
			spec := podSpecOf(o)
			if spec == nil {
				continue
			}
			for _, c := range spec.Spec.Containers {
				if c.Name != "ztunnel" && c.Name != "waypoint" {
					continue
				}
				args := argMap(c.Args)
				_, unsigned := args["controller-bundles-unsigned"]
				switch {
				case !fromController && (args["controller-bundles"] != "" || unsigned):
					t.Errorf("%s: %s: controller bundle flags beside --opa-config: %v", set, kindName(o), c.Args)
				case fromController && args["controller-bundles"] != url:
					t.Errorf("%s: %s: --controller-bundles=%q, want %s", set, kindName(o), args["controller-bundles"], url)
				case fromController && signed && (unsigned || args["verification-key"] == "" || !mountedAt(c, "/etc/regomesh/verification")):
					t.Errorf("%s: %s: the controller signs, yet args %v do not verify with the mounted key", set, kindName(o), c.Args)
				case args["verification-key"] != "" && args["verification-key-algorithm"] != str(vals, "policy", "signingAlgorithm", "RS256"):
					t.Errorf("%s: %s: --verification-key-algorithm=%q, but the controller signs with %s", set, kindName(o), args["verification-key-algorithm"], str(vals, "policy", "signingAlgorithm", "RS256"))
				case fromController && !signed && (!unsigned || args["verification-key"] != ""):
					t.Errorf("%s: %s: the controller serves unsigned bundles, yet args %v do not accept them", set, kindName(o), c.Args)
				}
			}
		}
	}
}
