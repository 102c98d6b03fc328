package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/internal/policysource"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// policyFlags are the waypoint's policy flags; with --controller and
// neither --bundle nor --opa-config, its policy is its Gateway's bundle
// from the controller.
func (c config) policyFlags() policysource.Flags {
	f := c.bundleFlags
	f.Controller = c.controller
	return f
}

// checkPolicySource refuses flags that leave the waypoint without
// policy, or that would silently do nothing; the controller's bundle is
// named by --gateway.
func (c config) checkPolicySource() error {
	f := c.policyFlags()
	if err := f.Check("request"); err != nil || !f.FromController() {
		return err
	}
	if ns, name, ok := strings.Cut(c.gateway, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("--gateway %q: the waypoint downloads its Gateway's bundle from the controller, named by --gateway NAMESPACE/NAME", c.gateway)
	}
	return nil
}

// bundleSet is the waypoint's bundle set for engine
// (policysource.Flags.Set, its Gateway's bundle from the controller by
// default with --controller); svid, the waypoint's own, is the
// credentials of the services that name opabundles.SVIDPlugin.
func (c config) bundleSet(engine *policy.Engine, svid *opabundles.SVIDCredentials, reg prometheus.Registerer, log *slog.Logger) (*opabundles.Set, error) {
	return c.policyFlags().Set(engine, xds.WaypointBundle(c.gateway), opabundles.Options{
		Metrics: opabundles.NewMetrics(reg), Logger: log, SVID: svid,
	})
}
