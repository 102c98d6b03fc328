package policy

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regomesh/regomesh/internal/syncbuf"
)

// ShadowDisagreements receives exactly the decisions the shadow set
// decides otherwise, whatever the sampling of the main log, each line in
// the main log's shape with the enforced result and the shadow's.
func TestDecisionLogShadowDisagreements(t *testing.T) {
	for _, tc := range []struct {
		name string
		main bool // a main writer, sampling almost nothing
	}{
		{name: "beside a sampled log", main: true},
		{name: "alone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mainBuf, shadowBuf syncbuf.Buffer
			cfg := DecisionLogConfig{ShadowDisagreements: &shadowBuf}
			var w *syncbuf.Buffer
			if tc.main {
				w, cfg.SampleRate = &mainBuf, 1e-12
			}
			reg := prometheus.NewPedanticRegistry()
			metrics := NewMetrics(reg)
			dl, err := newDecisionLoggerTo(w, cfg, metrics)
			if err != nil {
				t.Fatal(err)
			}
			e := loadEngine(t, withQuiet(Config{Metrics: metrics, DecisionLog: dl}), shopBundle)
			shadow, err := ReadBundle(shopV2Bundle, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.LoadShadow(context.Background(), shadow); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				for _, port := range []int{5432, 5433} { // 5432: allowed, denied by the shadow; 5433: both deny
					if d, err := e.Decide(context.Background(), apiToPostgres(port)); err != nil || d.Allow != (port == 5432) {
						t.Fatalf("port %d: enforced decision %+v, %v", port, d, err)
					}
				}
			}
			if err := dl.Close(); err != nil {
				t.Fatal(err)
			}
			lines := decodeLines(t, shadowBuf.Lines())
			if len(lines) != 3 {
				t.Fatalf("%d disagreement lines, want 3:\n%v", len(lines), shadowBuf.Lines())
			}
			for i, l := range lines {
				in, _ := l["input"].(map[string]any)
				dst, _ := in["destination"].(map[string]any)
				if l["decision_id"] == "" || l["timestamp"] == nil || dst["port"] != float64(5432) ||
					l["result"].(map[string]any)["allow"] != true || l["shadow"].(map[string]any)["allow"] != false {
					t.Errorf("line %d = %v, want the 5432 decision, allowed, shadow denying", i, l)
				}
			}
			if n := len(mainBuf.Lines()); n > 1 {
				t.Errorf("the main log sampled %d of 6 at a rate of 1e-12", n)
			}
		})
	}
}

// newDecisionLoggerTo is NewDecisionLogger with w possibly a nil
// *syncbuf.Buffer, meaning no writer.
func newDecisionLoggerTo(w *syncbuf.Buffer, cfg DecisionLogConfig, metrics *Metrics) (*DecisionLogger, error) {
	if w == nil {
		return NewDecisionLogger(nil, cfg, metrics)
	}
	return NewDecisionLogger(w, cfg, metrics)
}
