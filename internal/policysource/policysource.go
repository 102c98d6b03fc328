// Package policysource is where ztunnel's and the waypoint's policy comes
// from, as their flags say: --bundle files, an --opa-config, or by default
// with --controller the controller's bundle, and --shadow-bundle. Both
// binaries check and build their bundle set here (docs/bundles.md).
package policysource

import (
	"errors"
	"fmt"
	"time"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// Flags are a proxy's policy flags.
type Flags struct {
	Bundles         []string      // --bundle
	VerifyKey       string        // --verification-key
	VerifyAlgorithm string        // --verification-key-algorithm
	OPAConfig       string        // --opa-config
	Shadow          []string      // --shadow-bundle
	Poll            time.Duration // --bundle-poll
	// Controller is --controller; ControllerBundles and ControllerUnsigned
	// are --controller-bundles and --controller-bundles-unsigned.
	Controller, ControllerBundles string
	ControllerUnsigned            bool
}

// FromController says whether the policy is the controller's bundle:
// with --controller and neither --bundle nor --opa-config.
func (f Flags) FromController() bool {
	return f.Controller != "" && len(f.Bundles) == 0 && f.OPAConfig == ""
}

// Check refuses flags that leave the proxy without policy, or that would
// silently do nothing; denied names what a proxy without policy denies
// ("connection", "request").
func (f Flags) Check(denied string) error {
	switch {
	case f.Controller == "" && len(f.Bundles) == 0 && f.OPAConfig == "":
		return fmt.Errorf("at least one --bundle or an --opa-config is required: without policy every %s is denied", denied)
	case !f.FromController() && (f.ControllerBundles != "" || f.ControllerUnsigned):
		return errors.New("--controller-bundles and --controller-bundles-unsigned apply with --controller and neither --bundle nor --opa-config (docs/bundles.md)")
	case f.FromController() && f.VerifyKey == "" && !f.ControllerUnsigned:
		return errors.New("the controller's bundles are verified with --verification-key, the public key of its --bundle-signing-key: give it, or --controller-bundles-unsigned if the controller runs with --bundle-unsigned (docs/bundles.md)")
	case f.FromController() && f.VerifyKey != "" && f.ControllerUnsigned:
		return errors.New("--verification-key and --controller-bundles-unsigned both given: choose one")
	}
	return nil
}

// controllerBundle is the controller's bundle resource (xds.MeshBundle,
// or a waypoint's xds.WaypointBundle), as the proxy downloads it when
// FromController.
func (f Flags) controllerBundle(resource string) (*opabundles.Config, error) {
	url := f.ControllerBundles
	if url == "" {
		var err error
		if url, err = xds.BundleServerURL(f.Controller); err != nil {
			return nil, fmt.Errorf("--controller: %w", err)
		}
	}
	b := opabundles.ControllerBundle{URL: url, Resource: resource, Unsigned: f.ControllerUnsigned}
	if f.VerifyKey != "" {
		key, err := policy.ReadVerificationKey(f.VerifyKey, f.VerifyAlgorithm)
		if err != nil {
			return nil, fmt.Errorf("--verification-key: %w", err)
		}
		b.VerificationKey, b.VerificationAlgorithm = key.Key, key.Algorithm
	}
	cfg, err := b.Config()
	if err != nil {
		return nil, fmt.Errorf("--controller-bundles: %w", err)
	}
	return cfg, nil
}

// Set is the bundle set for engine: the --bundle files with their
// --verification-key, the --shadow-bundle files, and the bundles
// --opa-config names or, when FromController, the controller's resource.
// opts gives the rest (metrics, logger, SVID credentials, after-load
// hook); its Local, LocalPoll and Shadow are the flags'.
func (f Flags) Set(engine *policy.Engine, resource string, opts opabundles.Options) (*opabundles.Set, error) {
	var remote *opabundles.Config
	var err error
	switch {
	case f.OPAConfig != "":
		if remote, err = opabundles.ReadConfig(f.OPAConfig); err != nil {
			return nil, fmt.Errorf("--opa-config: %w", err)
		}
	case f.FromController():
		if remote, err = f.controllerBundle(resource); err != nil {
			return nil, err
		}
	}
	opts.Local = policy.BundleFiles{Paths: f.Bundles, VerifyKey: f.VerifyKey, VerifyAlgorithm: f.VerifyAlgorithm}
	opts.LocalPoll = f.Poll
	opts.Shadow = policy.BundleFiles{Paths: f.Shadow, VerifyKey: f.VerifyKey, VerifyAlgorithm: f.VerifyAlgorithm}
	return opabundles.New(engine, remote, opts)
}
