package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{name: "defaults", args: []string{"--local-config", "s.yaml", "--bundle", "b"}},
		{name: "state required", args: []string{"--bundle", "b"}, err: "exactly one of --local-config and --controller"},
		{name: "state from the controller", args: []string{"--controller", "controller:15010", "--bundle", "b"}},
		{name: "one state source", args: []string{"--local-config", "s.yaml", "--controller", "controller:15010", "--bundle", "b"}, err: "exactly one of --local-config and --controller"},
		{name: "policy required", args: []string{"--local-config", "s.yaml"}, err: "at least one --bundle or an --opa-config is required"},
		{name: "policy from an OPA configuration", args: []string{"--local-config", "s.yaml", "--opa-config", "opa.yaml"}},
		{name: "policy from the controller", args: []string{"--controller", "c:15012", "--gateway", "shop/wp", "--verification-key", "k.pem"}},
		{name: "the controller's, unsigned on purpose", args: []string{"--controller", "c:15012", "--gateway", "shop/wp", "--controller-bundles-unsigned"}},
		{name: "the controller's, neither verified nor unsigned", args: []string{"--controller", "c:15012", "--gateway", "shop/wp"}, err: "verified with --verification-key"},
		{name: "the controller's, without a Gateway", args: []string{"--controller", "c:15012", "--controller-bundles-unsigned"}, err: "--gateway NAMESPACE/NAME"},
		{name: "the controller's, key and unsigned", args: []string{"--controller", "c:15012", "--gateway", "shop/wp", "--verification-key", "k", "--controller-bundles-unsigned"}, err: "choose one"},
		{name: "controller flags doing nothing", args: []string{"--controller", "c:15012", "--bundle", "b", "--controller-bundles", "https://c:1"}, err: "apply with --controller and neither"},
		{name: "a shadow set and its log", args: []string{"--local-config", "s.yaml", "--bundle", "b", "--shadow-bundle", "c", "--shadow-log", "s.jsonl"}},
		{name: "a shadow log without a shadow set", args: []string{"--local-config", "s.yaml", "--bundle", "b", "--shadow-log", "s.jsonl"}, err: "--shadow-log needs --shadow-bundle"},
		{name: "admin stays on loopback", args: []string{"--local-config", "s", "--bundle", "b", "--admin-addr", ":15000"}, err: "loopback"},
		{name: "admin exposed on purpose", args: []string{"--local-config", "s", "--bundle", "b", "--admin-addr", ":15000", "--admin-expose"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.name == "defaults" && (cfg.hboneAddr != ":15008" || cfg.readinessAddr != ":15021" || cfg.metricsAddr != ":15020" || cfg.adminAddr != "127.0.0.1:15000") {
					t.Errorf("default ports: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one saying %q", err, tc.err)
			}
		})
	}
}
