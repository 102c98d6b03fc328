package opabundles

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/decisionlogs"
)

// closeUploadTimeout bounds the last upload of a stopping proxy.
const closeUploadTimeout = 5 * time.Second

// DecisionLogFiles are a proxy's flags that say where its decisions are
// logged (docs/decision-logs.md).
type DecisionLogFiles struct {
	// Path is the JSON-lines file of every decision (--decision-log); ""
	// for none.
	Path string
	// OPAConfig is the OPA configuration file (--opa-config) whose
	// decision_logs section names the service to upload to; "" or a file
	// without decision_logs for none.
	OPAConfig string
	// Shadow is the JSON-lines file of the decisions the shadow bundles
	// decide otherwise (--shadow-log); "" for none.
	Shadow string
}

// DecisionLog opens what a proxy logs its decisions to, all fed by one
// policy.DecisionLogger, so an event has the same decision_id in each.
// svid is for a service naming SVIDPlugin, as in Options. With none of
// files the logger is nil. The func closes the logger, makes the last
// upload (within 5 seconds) and closes the files.
func DecisionLog(files DecisionLogFiles, svid *SVIDCredentials, metrics *policy.Metrics, reg prometheus.Registerer, log *slog.Logger) (*policy.DecisionLogger, func(), error) {
	path, opaConfig := files.Path, files.OPAConfig
	var writers []io.Writer
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if opaConfig != "" {
		cfg, err := ReadConfig(opaConfig)
		if err != nil {
			return nil, nil, fmt.Errorf("--opa-config: %w", err)
		}
		u, err := cfg.DecisionLogUploader(log, svid, decisionlogs.NewMetrics(reg, metrics.DecisionLogDropped))
		if err != nil {
			return nil, nil, fmt.Errorf("--opa-config: %w", err)
		}
		if u != nil {
			writers = append(writers, u) // first: it never fails, so a failing file cannot keep events from it
			closers = append(closers, func() {
				ctx, cancel := context.WithTimeout(context.Background(), closeUploadTimeout)
				defer cancel()
				u.Close(ctx)
			})
			log.Info("uploading decision logs", "component", "decisionlogs", "service", cfg.DecisionLogs.Service, "resource", cfg.DecisionLogs.Upload.Resource, "instance_id", InstanceID)
		}
	}
	if path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("--decision-log: %w", err)
		}
		writers = append(writers, f)
		closers = append(closers, func() { f.Close() })
	}
	var cfg policy.DecisionLogConfig
	if files.Shadow != "" {
		f, err := os.OpenFile(files.Shadow, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("--shadow-log: %w", err)
		}
		cfg.ShadowDisagreements = f
		closers = append(closers, func() { f.Close() })
	}
	var w io.Writer
	switch {
	case len(writers) == 1:
		w = writers[0]
	case len(writers) > 1:
		w = io.MultiWriter(writers...)
	case files.Shadow == "":
		return nil, func() {}, nil
	}
	dl, err := policy.NewDecisionLogger(w, cfg, metrics)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return dl, func() { dl.Close(); closeAll() }, nil
}
