package opabundles

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/plugins"
	bundleplugin "github.com/open-policy-agent/opa/v1/plugins/bundle"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/open-policy-agent/opa/v1/util"
)

// StatusReport is where the status section of an OPA configuration sends
// bundle status: a service of the file and the path under it, as OPA's
// status plugin does (docs/decision-logs.md#bundle-status).
type StatusReport struct {
	// Service names the service of the file statuses are POSTed to.
	Service string
	// Resource is "/status", or "/status/<partition_name>".
	Resource string
}

// statusConfig is the status section, field names as OPA's status plugin
// reads them (v1/plugins/status.Config).
type statusConfig struct {
	Plugin        *string              `json:"plugin"`
	Service       string               `json:"service"`
	PartitionName string               `json:"partition_name"`
	Console       json.RawMessage      `json:"console"`
	Prometheus    json.RawMessage      `json:"prometheus"`
	Trigger       *plugins.TriggerMode `json:"trigger"`
}

// parseStatus reads the status section as OPA's status plugin does (the
// first service by default, the same checks), refusing what the proxies
// cannot do and warning of what they ignore.
func (c *Config) parseStatus(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var sc statusConfig
	if err := util.Unmarshal(raw, &sc); err != nil {
		return fmt.Errorf("opabundles: OPA configuration: status: %w", err)
	}
	services := slices.Sorted(maps.Keys(c.services))
	switch {
	case sc.Plugin != nil:
		return fmt.Errorf("opabundles: OPA configuration: status: plugin %q is not supported: the proxies run no OPA plugins (docs/decision-logs.md#bundle-status)", *sc.Plugin)
	case sc.Trigger != nil && *sc.Trigger == plugins.TriggerManual:
		return fmt.Errorf("opabundles: OPA configuration: status: trigger manual is not supported: nothing would ever report; use periodic (the default)")
	case sc.Service != "" && !slices.Contains(services, sc.Service):
		return fmt.Errorf("opabundles: OPA configuration: status: invalid service name %q in status", sc.Service)
	case sc.Service == "" && len(services) == 0:
		return fmt.Errorf("opabundles: OPA configuration: status: no service to report to (docs/decision-logs.md#bundle-status)")
	}
	if sc.Service == "" {
		sc.Service = services[0]
	}
	for _, o := range []struct {
		key string
		raw json.RawMessage
	}{{"console", sc.Console}, {"prometheus", sc.Prometheus}} {
		if !isNull(o.raw) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("status: %s is ignored: the proxies export regomesh_policy_remote_* metrics on --metrics-addr", o.key))
		}
	}
	c.Status = &StatusReport{Service: sc.Service, Resource: "/status"}
	if sc.PartitionName != "" {
		c.Status.Resource = "/status/" + sc.PartitionName
	}
	return nil
}

// statusUpdate is the body of a status report, field names as OPA's
// (v1/plugins/status.UpdateRequestV1); each bundle's status is OPA's own
// type.
type statusUpdate struct {
	Labels  map[string]string               `json:"labels"`
	Bundles map[string]*bundleplugin.Status `json:"bundles"`
}

// statusReporter keeps each remote bundle's status as OPA's bundle plugin
// keeps it and POSTs all of them whenever one changes, as OPA's status
// plugin does. Changes that arrive while a report is in flight are sent
// in the next; a failed report is retried after a backoff (0.1 s to 30 s),
// with whatever is latest then. A nil reporter does nothing.
type statusReporter struct {
	client   rest.Client
	resource string
	labels   map[string]string
	log      *slog.Logger

	mu      sync.Mutex
	bundles map[string]*bundleplugin.Status
	kick    chan struct{} // cap 1: a report is due
}

const statusMaxBackoff = 30 * time.Second

func newStatusReporter(client rest.Client, report *StatusReport, labels map[string]string, names []string, log *slog.Logger) *statusReporter {
	r := &statusReporter{client: client, resource: report.Resource, labels: labels, log: log,
		bundles: map[string]*bundleplugin.Status{}, kick: make(chan struct{}, 1)}
	for _, name := range names {
		r.bundles[name] = &bundleplugin.Status{Name: name}
	}
	return r
}

// update changes the status of bundle name and makes a report due.
func (r *statusReporter) update(name string, change func(*bundleplugin.Status)) {
	if r == nil {
		return
	}
	r.mu.Lock()
	if st, ok := r.bundles[name]; ok {
		change(st)
	}
	r.mu.Unlock()
	r.due()
}

func (r *statusReporter) due() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run reports until ctx ends.
func (r *statusReporter) run(ctx context.Context) {
	retries := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		if err := r.send(ctx); err != nil {
			retries++
			r.log.Warn("bundle status report failed; retrying", "retry", retries, "error", err)
			timer := time.NewTimer(util.DefaultBackoff(float64(100*time.Millisecond), float64(statusMaxBackoff), retries))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			r.due()
			continue
		}
		retries = 0
	}
}

func (r *statusReporter) send(ctx context.Context) error {
	r.mu.Lock()
	body := statusUpdate{Labels: r.labels, Bundles: make(map[string]*bundleplugin.Status, len(r.bundles))}
	for name, st := range r.bundles {
		c := *st
		c.Errors = slices.Clone(st.Errors)
		body.Bundles[name] = &c
	}
	r.mu.Unlock()
	resp, err := r.client.WithJSON(body).Do(ctx, "POST", r.resource)
	if err != nil {
		return fmt.Errorf("opabundles: status report: %w", err)
	}
	defer util.Close(resp)
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return fmt.Errorf("opabundles: status report: the service answered %s", resp.Status)
	}
	return nil
}
