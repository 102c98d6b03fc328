package main

import (
	"runtime/debug"
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

// ztunnel collects at GOGC=50 unless the environment says otherwise.
func TestGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	inForce := func() int { p := debug.SetGCPercent(100); debug.SetGCPercent(p); return p }
	setGCPercent(func(string) (string, bool) { return "", false })
	if got := inForce(); got != defaultGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, defaultGCPercent)
	}
	debug.SetGCPercent(80) // as GOGC=80 in the environment would have set it
	setGCPercent(func(string) (string, bool) { return "80", true })
	if got := inForce(); got != 80 {
		t.Errorf("GOGC=80: GC percent %d, want 80 kept", got)
	}
	// Empty or unparsable: the runtime used its default, so does ztunnel.
	for _, v := range []string{"", "fifty"} {
		debug.SetGCPercent(100)
		setGCPercent(func(string) (string, bool) { return v, true })
		if got := inForce(); got != defaultGCPercent {
			t.Errorf("GOGC=%q: GC percent %d, want %d", v, got, defaultGCPercent)
		}
	}
}
