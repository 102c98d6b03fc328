package opabundles

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/regomesh/regomesh/policy/decisionlogs"
)

// DecisionLogs is where the decision_logs section of an OPA configuration
// ships decision logs: a service of the file and how, as OPA's logs
// plugin parses them (docs/decision-logs.md).
type DecisionLogs struct {
	// Service names the service of the file events are POSTed to.
	Service string
	// Upload is the resource, limits and delays, OPA's defaults injected.
	Upload decisionlogs.Config
}

// maskDecisionPath is the only mask_decision the engine applies: the mask
// is data.system.log.mask of the deciding bundle set.
const maskDecisionPath = "/system/log/mask"

// minUploadDelay keeps a configuration of 0-second delays from uploading
// in a busy loop.
const minUploadDelay = 100 * time.Millisecond

// logsConfig is the decision_logs section, field names as OPA's logs
// plugin reads them (v1/plugins/logs.Config). OPA's parser is not used:
// the package holding it brings OPA's server, and its dependencies, into
// the proxies.
type logsConfig struct {
	Plugin         *string         `json:"plugin"`
	Service        string          `json:"service"`
	PartitionName  string          `json:"partition_name"`
	Resource       *string         `json:"resource"`
	MaskDecision   *string         `json:"mask_decision"`
	DropDecision   json.RawMessage `json:"drop_decision"`
	Console        json.RawMessage `json:"console"`
	RequestContext json.RawMessage `json:"request_context"`
	NDBuiltinCache json.RawMessage `json:"nd_builtin_cache"`
	Reporting      struct {
		BufferType            string               `json:"buffer_type"`
		BufferSizeLimitBytes  *int64               `json:"buffer_size_limit_bytes"`
		BufferSizeLimitEvents *int64               `json:"buffer_size_limit_events"`
		UploadSizeLimitBytes  *int64               `json:"upload_size_limit_bytes"`
		MinDelaySeconds       *int64               `json:"min_delay_seconds"`
		MaxDelaySeconds       *int64               `json:"max_delay_seconds"`
		MaxDecisionsPerSecond *float64             `json:"max_decisions_per_second"`
		Trigger               *plugins.TriggerMode `json:"trigger"`
	} `json:"reporting"`
}

// OPA's defaults and bounds for decision_logs (v1/plugins/logs).
const (
	opaLogsMinDelaySeconds = 300
	opaLogsMaxDelaySeconds = 600
	opaLogsMinUploadBytes  = 90
	opaLogsMaxUploadBytes  = 4294967296
)

// parseDecisionLogs reads the decision_logs section as OPA's logs plugin
// does (the same defaults, the same checks, the same messages), refuses
// what the proxies cannot do as the file means it, and warns of what they
// ignore. labels are the file's top-level labels, added to every event as
// OPA adds them.
func (c *Config) parseDecisionLogs(raw json.RawMessage, labels map[string]string) error {
	if isNull(raw) {
		return nil
	}
	var lc logsConfig
	if err := util.Unmarshal(raw, &lc); err != nil {
		return fmt.Errorf("opabundles: OPA configuration: decision_logs: %w", err)
	}
	up, err := c.uploadConfig(&lc)
	if err != nil {
		return fmt.Errorf("opabundles: OPA configuration: decision_logs: %w (docs/decision-logs.md)", err)
	}
	up.Labels = labels
	for _, o := range []struct {
		key string
		raw json.RawMessage
	}{{"console", lc.Console}, {"drop_decision", lc.DropDecision}, {"request_context", lc.RequestContext}, {"nd_builtin_cache", lc.NDBuiltinCache}} {
		if !isNull(o.raw) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("decision_logs: %s is ignored: %s", o.key, decisionLogsIgnored[o.key]))
		}
	}
	c.DecisionLogs = &DecisionLogs{Service: lc.Service, Upload: up}
	return nil
}

// uploadConfig checks lc and injects OPA's defaults; lc.Service is set to
// the first service when empty, as OPA does.
func (c *Config) uploadConfig(lc *logsConfig) (decisionlogs.Config, error) {
	services := slices.Sorted(maps.Keys(c.services))
	r := &lc.Reporting
	switch {
	case lc.Plugin != nil:
		return decisionlogs.Config{}, fmt.Errorf("plugin %q is not supported: the proxies run no OPA plugins", *lc.Plugin)
	case lc.Service == "" && len(services) == 0:
		return decisionlogs.Config{}, fmt.Errorf("no service to upload to (console logging alone: use --decision-log)")
	case lc.Service != "" && !slices.Contains(services, lc.Service):
		return decisionlogs.Config{}, fmt.Errorf("invalid service name %q in decision_logs", lc.Service)
	case r.Trigger != nil && *r.Trigger == plugins.TriggerManual:
		return decisionlogs.Config{}, fmt.Errorf("trigger manual is not supported: nothing would ever upload; use periodic (the default)")
	case r.Trigger != nil && *r.Trigger != plugins.TriggerPeriodic && *r.Trigger != plugins.TriggerImmediate:
		return decisionlogs.Config{}, fmt.Errorf("invalid trigger mode %q (want %q)", *r.Trigger, plugins.TriggerPeriodic)
	case lc.MaskDecision != nil && strings.Trim(*lc.MaskDecision, "/") != strings.Trim(maskDecisionPath, "/"):
		return decisionlogs.Config{}, fmt.Errorf("mask_decision %q is not supported: the proxies mask with data.system.log.mask (%s) of the deciding bundles", *lc.MaskDecision, maskDecisionPath)
	case (r.MinDelaySeconds == nil) != (r.MaxDelaySeconds == nil):
		return decisionlogs.Config{}, fmt.Errorf("reporting configuration needs both 'min_delay_seconds' and 'max_delay_seconds' in decision_logs")
	case r.MinDelaySeconds != nil && *r.MaxDelaySeconds < *r.MinDelaySeconds:
		return decisionlogs.Config{}, fmt.Errorf("max reporting delay must be >= min reporting delay in decision_logs")
	}
	if lc.Service == "" {
		lc.Service = services[0]
	}
	minDelay, maxDelay := int64(opaLogsMinDelaySeconds), int64(opaLogsMaxDelaySeconds)
	if r.MinDelaySeconds != nil {
		minDelay, maxDelay = *r.MinDelaySeconds, *r.MaxDelaySeconds
	}
	upload := int64(decisionlogs.DefaultUploadLimitBytes)
	if r.UploadSizeLimitBytes != nil {
		upload = *r.UploadSizeLimitBytes
	}
	up := decisionlogs.Config{
		Resource:         "/logs",
		UploadLimitBytes: min(max(upload, opaLogsMinUploadBytes), opaLogsMaxUploadBytes),
		MinDelay:         max(time.Duration(minDelay)*time.Second, minUploadDelay),
		MaxDelay:         max(time.Duration(maxDelay)*time.Second, minUploadDelay),
	}
	if upload != up.UploadLimitBytes {
		c.Warnings = append(c.Warnings, fmt.Sprintf("decision_logs: upload_size_limit_bytes %d is outside [%d, %d]: %d is used, as OPA does", upload, opaLogsMinUploadBytes, opaLogsMaxUploadBytes, up.UploadLimitBytes))
	}
	switch {
	case lc.PartitionName != "":
		up.Resource = "/logs/" + lc.PartitionName
	case lc.Resource != nil:
		if _, err := url.Parse(*lc.Resource); err != nil {
			return decisionlogs.Config{}, fmt.Errorf("invalid resource path %q: %w", *lc.Resource, err)
		}
		up.Resource = *lc.Resource
	}
	if err := bufferLimits(r.BufferType, r.BufferSizeLimitBytes, r.BufferSizeLimitEvents, r.MaxDecisionsPerSecond, &up); err != nil {
		return decisionlogs.Config{}, err
	}
	if r.MaxDecisionsPerSecond != nil {
		up.MaxPerSecond = *r.MaxDecisionsPerSecond
	}
	return up, nil
}

// bufferLimits applies OPA's buffer_type rules: "size" (the default)
// bounds bytes, "event" bounds events (10000 unless set).
func bufferLimits(kind string, bytes, events *int64, perSecond *float64, up *decisionlogs.Config) error {
	switch kind {
	case "", "size":
		if events != nil {
			return fmt.Errorf("invalid decision_log config, 'buffer_size_limit_events' isn't supported for the size buffer type")
		}
		if bytes != nil && perSecond != nil {
			return fmt.Errorf("invalid decision_log config, specify either 'buffer_size_limit_bytes' or 'max_decisions_per_second'")
		}
		if bytes != nil {
			if *bytes <= 0 {
				return fmt.Errorf("invalid decision_log config, 'buffer_size_limit_bytes' must be higher than 0")
			}
			up.BufferLimitBytes = *bytes
		}
		// unset: decisionlogs.DefaultBufferLimitBytes, where OPA has no limit
	case "event":
		if bytes != nil {
			return fmt.Errorf("invalid decision_log config, 'buffer_size_limit_bytes' isn't supported for the event buffer type")
		}
		up.BufferLimitEvents = decisionlogs.DefaultBufferLimitEvents
		if events != nil {
			if *events <= 0 {
				return fmt.Errorf("invalid decision_log config, 'buffer_size_limit_events' must be higher than 0")
			}
			up.BufferLimitEvents = *events
		}
	default:
		return fmt.Errorf("invalid buffer type %q, expected %q or %q", kind, "event", "size")
	}
	return nil
}

var decisionLogsIgnored = map[string]string{
	"console":          "--decision-log writes the same events to a file (or - for standard output)",
	"drop_decision":    "every decision is uploaded (sampling: none); only a full buffer drops events",
	"request_context":  "the input document already holds the request's headers",
	"nd_builtin_cache": "the proxies' policies call no non-deterministic built-in functions worth caching",
}

// DecisionLogUploader starts shipping decision logs to the decision_logs
// service, with the file's credentials for it (svid for SVIDPlugin, as
// New): nil when the file has no decision_logs section. Write the
// engine's decision log to it (policy.NewDecisionLogger) and Close it
// after the logger.
func (c *Config) DecisionLogUploader(log *slog.Logger, svid *SVIDCredentials, metrics *decisionlogs.Metrics) (*decisionlogs.Uploader, error) {
	if c == nil || c.DecisionLogs == nil {
		return nil, nil
	}
	clients, err := c.clients(log, svid)
	if err != nil {
		return nil, err
	}
	u, err := decisionlogs.New(clients[c.DecisionLogs.Service], c.DecisionLogs.Upload, metrics, log)
	if err != nil {
		return nil, fmt.Errorf("opabundles: OPA configuration: decision_logs: %w", err)
	}
	return u, nil
}
