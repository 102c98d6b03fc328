package main

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/ztunnel"
)

// The --hbone-* flags reach the HBONE configuration every pod's server
// gets, with one NodeLimits for the node, and refusals reach the metric.
func TestHBONEFlags(t *testing.T) {
	base := []string{"--local-config", "s.yaml", "--bundle", "a"}
	cfg, err := parseFlags(append(base, "--hbone-conns-per-peer", "3", "--hbone-window-budget-mib", "8",
		"--hbone-node-conns", "50", "--hbone-idle-timeout", "90s"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	conn := cfg.hbone.conn(ztunnel.NewMetrics(reg).HBONERefused)
	want := hbone.DefaultLimits
	want.ConnsPerPeer, want.WindowBytes = 3, 8<<20
	if conn.Limits != want {
		t.Errorf("pod limits = %+v, want %+v", conn.Limits, want)
	}
	if conn.Node == nil || conn.IdleTimeout != 90*time.Second {
		t.Errorf("node limits %v, idle timeout %v: want shared limits and 90s", conn.Node, conn.IdleTimeout)
	}

	defaults, err := parseFlags(base)
	if err != nil {
		t.Fatal(err)
	}
	if got := defaults.hbone.conn(nil).Limits; got != hbone.DefaultLimits {
		t.Errorf("default pod limits = %+v, want hbone.DefaultLimits %+v", got, hbone.DefaultLimits)
	}

	conn.OnRefuse(hbone.RefusedRapidReset)
	conn.OnRefuse(hbone.RefusedRapidReset)
	if got := refusedTotal(t, reg, string(hbone.RefusedRapidReset)); got != 2 {
		t.Errorf("regomesh_hbone_refused_total{reason=rapid_reset} = %v, want 2", got)
	}
}

func refusedTotal(t *testing.T, g prometheus.Gatherer, reason string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "regomesh_hbone_refused_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
