package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// fromController says whether ztunnel's policy is the controller's mesh
// bundle: with --controller and neither --bundle nor --opa-config.
func (c config) fromController() bool {
	return c.controller != "" && len(c.bundles) == 0 && c.opaConfig == ""
}

// checkPolicySource refuses flags that leave ztunnel without policy, or
// that would silently do nothing.
func (c config) checkPolicySource() error {
	switch {
	case c.controller == "" && len(c.bundles) == 0 && c.opaConfig == "":
		return errors.New("at least one --bundle or an --opa-config is required: without policy every connection is denied")
	case !c.fromController() && (c.controllerBundles != "" || c.controllerBundlesUnsigned):
		return errors.New("--controller-bundles and --controller-bundles-unsigned apply with --controller and neither --bundle nor --opa-config (docs/bundles.md)")
	case c.fromController() && c.verifyKey == "" && !c.controllerBundlesUnsigned:
		return errors.New("the controller's bundles are verified with --verification-key, the public key of its --bundle-signing-key: give it, or --controller-bundles-unsigned if the controller runs with --bundle-unsigned (docs/bundles.md)")
	case c.fromController() && c.verifyKey != "" && c.controllerBundlesUnsigned:
		return errors.New("--verification-key and --controller-bundles-unsigned both given: choose one")
	}
	return nil
}

// controllerBundle is the controller's mesh bundle, as ztunnel downloads
// it when fromController.
func (c config) controllerBundle() (*opabundles.Config, error) {
	url := c.controllerBundles
	if url == "" {
		var err error
		if url, err = xds.BundleServerURL(c.controller); err != nil {
			return nil, fmt.Errorf("--controller: %w", err)
		}
	}
	b := opabundles.ControllerBundle{URL: url, Resource: xds.MeshBundle, Unsigned: c.controllerBundlesUnsigned}
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
// the bundles --opa-config names or the controller's, for engine. svid,
// ztunnel's own with --controller, is the credentials of the services
// that name opabundles.SVIDPlugin.
func (c config) bundleSet(engine *policy.Engine, svid *opabundles.SVIDCredentials, reg prometheus.Registerer, log *slog.Logger, afterLoad func()) (*opabundles.Set, error) {
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
	return opabundles.New(engine, remote, opabundles.Options{
		Local:     policy.BundleFiles{Paths: c.bundles, VerifyKey: c.verifyKey},
		LocalPoll: c.bundlePoll, Metrics: opabundles.NewMetrics(reg), Logger: log, AfterLoad: afterLoad, SVID: svid,
		Shadow: policy.BundleFiles{Paths: c.shadowBundles, VerifyKey: c.verifyKey},
	})
}
