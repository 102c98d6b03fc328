package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/regomesh/regomesh/waypoint"
)

func TestParseCumShares(t *testing.T) {
	out := `File: waypoint
Type: cpu
Duration: 4.01s, Total samples = 4s (99.75%)
Showing nodes accounting for 3.50s, 87.50% of 4s total
      flat  flat%   sum%        cum   cum%
     0.10s  2.50%  2.50%      3.20s 80.00%  net/http.(*conn).serve
     0.01s  0.25%  2.75%      0.30s  7.50%  github.com/regomesh/regomesh/waypoint.(*Waypoint).authorize
     0.02s  0.50%  3.25%      0.25s  6.25%  github.com/regomesh/regomesh/policy.(*Engine).Decide
`
	funcs := []string{
		"github.com/regomesh/regomesh/waypoint.(*Waypoint).authorize",
		"github.com/regomesh/regomesh/policy.(*Engine).Decide",
		"github.com/regomesh/regomesh/waypoint.RequestOf",
	}
	got, err := parseCumShares([]byte(out), funcs)
	if err != nil {
		t.Fatal(err)
	}
	if m := totalSamples.FindSubmatch([]byte(out)); m == nil || string(m[1]) != "4s" {
		t.Errorf("total samples: %q, want 4s", m)
	}
	want := map[string]float64{funcs[0]: 0.075, funcs[1]: 0.0625, funcs[2]: 0}
	for f, w := range want {
		if d := got[f] - w; d > 1e-9 || d < -1e-9 {
			t.Errorf("share of %s = %v, want %v", f, got[f], w)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		v    []float64
		want float64
	}{
		{"none", nil, 0},
		{"odd count", []float64{3, 1, 2}, 2},
		{"even count is the mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.v); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
}

// TestWaypointRoutes: the bench's routes load as the waypoint loads
// them, every one attached, and name services the bench's state has.
func TestWaypointRoutes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(path, []byte(waypointRoutes()), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := waypoint.ReadRoutes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.HTTPRoutes) != httpRoutes+1 {
		t.Errorf("%d HTTPRoutes, want %d", len(res.HTTPRoutes), httpRoutes+1)
	}
	rs, notes, err := waypoint.NewRouteSet(res, "cluster.local")
	if err != nil || len(notes) > 0 {
		t.Fatalf("NewRouteSet: %v, notes %v", err, notes)
	}
	if rs.Len() != httpRoutes+1 {
		t.Errorf("%d attachments, want %d", rs.Len(), httpRoutes+1)
	}
	if n := len(waypointServices()); n != httpServices+1 {
		t.Errorf("%d services, want %d", n, httpServices+1)
	}
}

// TestLoadgenRejectsBadSpec: the -loadgen process refuses what it cannot
// parse, before running anything.
func TestLoadgenRejectsBadSpec(t *testing.T) {
	var out bytes.Buffer
	if err := loadgenMain("{not json", &out); err == nil {
		t.Fatalf("loadgenMain accepted a broken spec and printed %q", out.String())
	}
}
