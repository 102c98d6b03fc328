package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"--local-config", "state.yaml", "--bundle", "a", "--bundle", "b.tar.gz", "--node", "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.trustDomain != "cluster.local" || cfg.adminAddr != "127.0.0.1:15000" || cfg.drainTimeout != 30*time.Second ||
		len(cfg.bundles) != 2 || cfg.node != "n1" || cfg.spireSocket != "/run/spire/admin/admin.sock" {
		t.Errorf("config = %+v", cfg)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bundle", "a"}, "--local-config is required"},
		{[]string{"--local-config", "s.yaml"}, "at least one --bundle"},
		{[]string{"--local-config", "s.yaml", "--bundle", "a", "--drain-timeout", "soon"}, "invalid value"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}
