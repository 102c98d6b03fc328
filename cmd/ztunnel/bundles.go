package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/internal/policysource"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// policyFlags are ztunnel's policy flags; with --controller and neither
// --bundle nor --opa-config, its policy is the controller's mesh bundle.
func (c config) policyFlags() policysource.Flags {
	f := c.bundleFlags
	f.Controller = c.controller
	return f
}

// checkPolicySource refuses flags that leave ztunnel without policy, or
// that would silently do nothing.
func (c config) checkPolicySource() error { return c.policyFlags().Check("connection") }

// bundleSet is ztunnel's bundle set for engine (policysource.Flags.Set,
// the controller's bundles/mesh by default with --controller). svid,
// ztunnel's own with --controller, is the credentials of the services
// that name opabundles.SVIDPlugin.
func (c config) bundleSet(engine *policy.Engine, svid *opabundles.SVIDCredentials, reg prometheus.Registerer, log *slog.Logger, afterLoad func()) (*opabundles.Set, error) {
	return c.policyFlags().Set(engine, xds.MeshBundle, opabundles.Options{
		Metrics: opabundles.NewMetrics(reg), Logger: log, AfterLoad: afterLoad, SVID: svid,
	})
}
