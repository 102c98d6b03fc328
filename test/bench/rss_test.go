package main

import (
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name     string
		status   string
		want     procStatus
		wantErrs bool
	}{
		{"a process", "Name:\tztunnel\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 1300000 kB\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\nRssAnon:\t    8192 kB\nRssFile:\t   12288 kB\nThreads:\t12\n",
			procStatus{name: "ztunnel", rss: 20 << 20, hwm: 30 << 20, anon: 8 << 20, file: 12 << 20}, false},
		{"an older kernel without the split", "Name:\tztunnel\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\n",
			procStatus{name: "ztunnel", rss: 20 << 20, hwm: 30 << 20}, false},
		{"a kernel thread has no VmRSS", "Name:\tkworker/0:1\nState:\tI (idle)\n", procStatus{name: "kworker/0:1"}, true},
		{"a size without its unit", "Name:\tx\nVmHWM:\t5\nVmRSS:\t5 kB\n", procStatus{name: "x"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.status))
			if (err != nil) != tt.wantErrs {
				t.Fatalf("err = %v, want error %v", err, tt.wantErrs)
			}
			if !tt.wantErrs && got != tt.want {
				t.Errorf("parseStatus = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSyntheticState: the synthetic workloads and services are a valid
// local config as ztunnel reads it (unique names and addresses), with a
// Service selecting each Deployment's replicas.
func TestSyntheticState(t *testing.T) {
	workloads, services := syntheticState(1000)
	b, err := yaml.Marshal(state.LocalConfig{Workloads: workloads, Services: services})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := state.Decode(b, state.Options{TrustDomain: "regomesh.test"})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Workloads) != 1000 || len(snap.Services) != 1000/replicasPerApp {
		t.Fatalf("%d workloads, %d services", len(snap.Workloads), len(snap.Services))
	}
	uids := map[string]bool{}
	for _, w := range snap.Workloads {
		if uids[w.UID] {
			t.Errorf("uid %s twice", w.UID)
		}
		uids[w.UID] = true
		if w.IPs[0].As4()[0] == 10 || w.Node == "node-1" || w.Node == "node-2" {
			t.Errorf("workload %s/%s at %s on %s: in the bed's space", w.Namespace, w.Name, w.IPs[0], w.Node)
		}
	}
	for _, svc := range snap.Services {
		if eps := snap.Endpoints(svc); len(eps) != replicasPerApp {
			t.Errorf("service %s/%s selects %d workloads, want %d", svc.Namespace, svc.Name, len(eps), replicasPerApp)
		}
	}
}
