package main

import (
	"runtime/debug"
	"slices"
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
		len(cfg.bundleFlags.Bundles) != 2 || cfg.node != "n1" || cfg.spireSocket != "/run/spire/admin/admin.sock" {
		t.Errorf("config = %+v", cfg)
	}
	if cfg, err := parseFlags([]string{"--local-config", "s.yaml", "--opa-config", "opa.yaml"}); err != nil || cfg.bundleFlags.OPAConfig != "opa.yaml" || len(cfg.bundleFlags.Bundles) != 0 {
		t.Errorf("--opa-config without --bundle: %+v, %v", cfg, err)
	}
	if cfg, err := parseFlags([]string{"--local-config", "s.yaml", "--bundle", "a", "--shadow-bundle", "c1", "--shadow-bundle", "c2", "--shadow-log", "s.jsonl"}); err != nil ||
		len(cfg.bundleFlags.Shadow) != 2 || cfg.shadowLog != "s.jsonl" {
		t.Errorf("--shadow-bundle twice and --shadow-log: %+v, %v", cfg, err)
	}
	if _, err := parseFlags([]string{"--local-config", "s.yaml", "--bundle", "a", "--shadow-log", "s.jsonl"}); err == nil || !strings.Contains(err.Error(), "--shadow-log needs --shadow-bundle") {
		t.Errorf("--shadow-log alone: %v, want it refused", err)
	}
	// --controller alone: the controller's bundle, verified or unsigned on purpose.
	for _, args := range [][]string{
		{"--controller", "c:15012", "--verification-key", "k.pem"},
		{"--controller", "c:15012", "--controller-bundles-unsigned", "--controller-bundles", "https://bundles:8443"},
	} {
		if cfg, err := parseFlags(args); err != nil || !cfg.policyFlags().FromController() {
			t.Errorf("parseFlags(%v) = %+v, %v: want the controller's bundle", args, cfg, err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bundle", "a"}, "exactly one of --local-config and --controller"},
		{[]string{"--local-config", "s.yaml", "--controller", "c:15010", "--bundle", "a"}, "exactly one of --local-config and --controller"},
		{[]string{"--local-config", "s.yaml"}, "at least one --bundle or an --opa-config"},
		{[]string{"--local-config", "s.yaml", "--bundle", "a", "--drain-timeout", "soon"}, "invalid value"},
		{[]string{"--local-config", "s.yaml", "--bundle", "a", "--admin-addr", ":15000"}, "binds a loopback address only"},
		{[]string{"--local-config", "s.yaml", "--bundle", "a", "--admin-addr", "10.0.0.1:15000"}, "--admin-expose"},
		{[]string{"--local-config", "s.yaml", "--bundle", "a", "--admin-addr", "127.0.0.1"}, "missing port"},
		{[]string{"--controller", "c:15012"}, "verified with --verification-key"},
		{[]string{"--controller", "c:15012", "--verification-key", "k.pem", "--controller-bundles-unsigned"}, "choose one"},
		{[]string{"--controller", "c:15012", "--bundle", "a", "--controller-bundles-unsigned"}, "apply with --controller and neither --bundle nor --opa-config"},
		{[]string{"--controller", "c:15012", "--opa-config", "o.yaml", "--controller-bundles", "https://c:1"}, "apply with --controller and neither"},
		{[]string{"--local-config", "s.yaml", "--controller-bundles-unsigned"}, "at least one --bundle"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) = %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// The admin endpoint stays on loopback unless --admin-expose says otherwise.
func TestAdminAddrOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		expose bool
	}{
		{"127.0.0.1:15000", false},
		{"127.0.0.2:15000", false},
		{"[::1]:15000", false},
		{"localhost:15000", false},
		{":15000", true},
		{"10.0.0.1:15000", true},
	} {
		args := []string{"--local-config", "s.yaml", "--bundle", "a", "--admin-addr", tc.addr}
		if tc.expose {
			args = append(args, "--admin-expose")
		}
		cfg, err := parseFlags(args)
		if err != nil {
			t.Errorf("parseFlags(%v): %v", args, err)
			continue
		}
		if cfg.adminAddr != tc.addr || cfg.adminExpose != tc.expose {
			t.Errorf("parseFlags(%v): admin %q expose %v", args, cfg.adminAddr, cfg.adminExpose)
		}
	}
}

func TestServicePorts(t *testing.T) {
	cfg, err := parseFlags([]string{"--local-config", "s.yaml", "--bundle", "a", "--metrics-addr", "[::]:9090", "--readiness-addr", ":8081"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.servicePorts(); !slices.Equal(got, []uint16{15000, 9090, 8081}) {
		t.Errorf("service ports %v, want admin, metrics and readiness: [15000 9090 8081]", got)
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
