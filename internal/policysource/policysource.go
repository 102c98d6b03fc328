// Package policysource is where ztunnel's and the waypoint's policy comes
// from, as their flags say: --bundle files, an --opa-config, or by default
// with --controller the controller's bundle, and --shadow-bundle. Both
// binaries check and build their bundle set here (docs/bundles.md).
package policysource

import (
	"errors"
	"flag"
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

// Proxy names, in the flags' help, the proxy Register defines them for.
type Proxy struct {
	// Name is the proxy in a sentence: "ztunnel", "the waypoint".
	Name string
	// Resource is what it downloads from the controller by default:
	// "bundles/mesh".
	Resource string
	// Shadow is what the shadow set does beside the policy in force:
	// "every decision is also taken".
	Shadow string
}

// Register defines the policy flags on fs, filling f. --controller is the
// proxy's own (it streams its state too): set f.Controller from it after
// parsing.
func (f *Flags) Register(fs *flag.FlagSet, p Proxy) {
	fs.Var((*paths)(&f.Bundles), "bundle", fmt.Sprintf("OPA policy bundle directory or .tar.gz (repeatable; reloaded on change, the last good set kept); with --controller and neither this nor --opa-config, %s downloads %s from the controller with its SVID (docs/bundles.md)", p.Name, p.Resource))
	fs.StringVar(&f.ControllerBundles, "controller-bundles", "", fmt.Sprintf("the controller's bundle server, where %s downloads %s with its SVID when given --controller and neither --bundle nor --opa-config (default https://<host of --controller>:15013)", p.Name, p.Resource))
	fs.BoolVar(&f.ControllerUnsigned, "controller-bundles-unsigned", false, "accept the controller's bundles unsigned, as it serves them with --bundle-unsigned; without it, --verification-key is required and an unsigned bundle is refused")
	fs.StringVar(&f.VerifyKey, "verification-key", "", "PEM public key (an HMAC secret for HS256/384/512) the signatures of --bundle bundles, and of the controller's bundle, must verify against; --opa-config bundles are verified with its keys and signing settings")
	fs.StringVar(&f.VerifyAlgorithm, "verification-key-algorithm", "RS256", "signature algorithm of --verification-key: RS256, RS384, RS512, PS256, PS384, PS512 (an RSA key), ES256, ES384, ES512 (an ECDSA key), HS256, HS384, HS512 (a secret); the controller's --bundle-signing-algorithm")
	fs.StringVar(&f.OPAConfig, "opa-config", "", "OPA configuration file (YAML or JSON) whose services, keys and bundles sections name bundles to download with OPA's bundle service protocol, activated together with the --bundle ones; not ready, and denying everything, until each has activated once; see docs/bundles.md")
	fs.DurationVar(&f.Poll, "bundle-poll", 2*time.Second, "how often --bundle paths are checked for changes")
	fs.Var((*paths)(&f.Shadow), "shadow-bundle", fmt.Sprintf("candidate OPA bundle directory or .tar.gz (repeatable; reloaded on change; verified with --verification-key): %s by this set, never enforced, and where it disagrees is counted in regomesh_policy_shadow_disagreements_total and written to --shadow-log (docs/decision-logs.md#shadow-policy)", p.Shadow))
}

// paths is a repeatable flag's values.
type paths []string

func (s *paths) String() string     { return fmt.Sprint(*s) }
func (s *paths) Set(v string) error { *s = append(*s, v); return nil }

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
