package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// fromController says whether the waypoint's policy is its Gateway's
// bundle from the controller: with --controller and neither --bundle nor
// --opa-config.
func (c config) fromController() bool {
	return c.controller != "" && len(c.bundles) == 0 && c.opaConfig == ""
}

// checkPolicySource refuses flags that leave the waypoint without
// policy, or that would silently do nothing.
func (c config) checkPolicySource() error {
	switch {
	case c.controller == "" && len(c.bundles) == 0 && c.opaConfig == "":
		return errors.New("at least one --bundle or an --opa-config is required: without policy every request is denied")
	case !c.fromController() && (c.controllerBundles != "" || c.controllerBundlesUnsigned):
		return errors.New("--controller-bundles and --controller-bundles-unsigned apply with --controller and neither --bundle nor --opa-config (docs/bundles.md)")
	case !c.fromController():
		return nil
	case c.verifyKey == "" && !c.controllerBundlesUnsigned:
		return errors.New("the controller's bundles are verified with --verification-key, the public key of its --bundle-signing-key: give it, or --controller-bundles-unsigned if the controller runs with --bundle-unsigned (docs/bundles.md)")
	case c.verifyKey != "" && c.controllerBundlesUnsigned:
		return errors.New("--verification-key and --controller-bundles-unsigned both given: choose one")
	}
	if ns, name, ok := strings.Cut(c.gateway, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("--gateway %q: the waypoint downloads its Gateway's bundle from the controller, named by --gateway NAMESPACE/NAME", c.gateway)
	}
	return nil
}

// controllerBundle is the bundle of the waypoint's Gateway, as the
// waypoint downloads it when fromController.
func (c config) controllerBundle() (*opabundles.Config, error) {
	url := c.controllerBundles
	if url == "" {
		var err error
		if url, err = xds.BundleServerURL(c.controller); err != nil {
			return nil, fmt.Errorf("--controller: %w", err)
		}
	}
	b := opabundles.ControllerBundle{URL: url, Resource: xds.WaypointBundle(c.gateway), Unsigned: c.controllerBundlesUnsigned}
	if c.verifyKey != "" {
		key, err := policy.ReadVerificationKey(c.verifyKey, "RS256")
		if err != nil {
			return nil, fmt.Errorf("--verification-key: %w", err)
		}
		b.VerificationKey = key.Key
	}
	cfg, err := b.Config()
	if err != nil {
		return nil, fmt.Errorf("--controller-bundles: %w", err)
	}
	return cfg, nil
}

// bundleSet is the --bundle files, with their --verification-key, and
// the bundles --opa-config names or the controller's, for engine; the
// services that name opabundles.SVIDPlugin get the waypoint's SVID from
// source, and must present --controller-identity.
func (c config) bundleSet(engine *policy.Engine, source *workloadapi.X509Source, reg prometheus.Registerer, log *slog.Logger) (*opabundles.Set, error) {
	var remote *opabundles.Config
	var err error
	switch {
	case c.opaConfig != "":
		if remote, err = opabundles.ReadConfig(c.opaConfig); err != nil {
			return nil, fmt.Errorf("--opa-config: %w", err)
		}
	case c.fromController():
		if remote, err = c.controllerBundle(); err != nil {
			return nil, err
		}
	}
	controllerID, err := c.controllerID()
	if err != nil {
		return nil, err
	}
	return opabundles.New(engine, remote, opabundles.Options{
		Local:     policy.BundleFiles{Paths: c.bundles, VerifyKey: c.verifyKey},
		LocalPoll: c.bundlePoll, Metrics: opabundles.NewMetrics(reg), Logger: log,
		SVID:   &opabundles.SVIDCredentials{SVID: source, Bundle: source, Server: controllerID},
		Shadow: policy.BundleFiles{Paths: c.shadowBundles, VerifyKey: c.verifyKey},
	})
}
