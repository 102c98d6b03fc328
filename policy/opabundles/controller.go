package opabundles

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ControllerBundle is the bundle a proxy downloads from
// regomesh-controller's bundle server when it is given no other policy:
// the same download as an OPA configuration naming it, with the proxy's
// SVID as credentials (SVIDPlugin), long polling, and the signature
// required unless Unsigned says otherwise.
type ControllerBundle struct {
	// URL is the bundle server's base URL, https://<controller>:15013.
	URL string
	// Resource is the bundle's path on it: bundles/mesh for a ztunnel,
	// bundles/waypoint/<namespace>/<gateway> for a waypoint. The bundle's
	// name (in metrics, logs and revisions) is the path without
	// "bundles/".
	Resource string
	// VerificationKey is the PEM public key the bundle's signature must
	// verify against: the public half of the controller's
	// --bundle-signing-key. Required unless Unsigned.
	VerificationKey string
	// VerificationAlgorithm is the key's signature algorithm, the
	// controller's --bundle-signing-algorithm; empty means RS256.
	VerificationAlgorithm string
	// Unsigned accepts the bundle without a signature, on purpose: the
	// controller runs with --bundle-unsigned.
	Unsigned bool
}

// controllerService and controllerKey name the service and the key in
// the generated configuration.
const (
	controllerService = "regomesh-controller"
	controllerKey     = "regomesh-controller"
)

// Config is the OPA configuration that downloads b, parsed by ParseConfig
// as an --opa-config file would be.
func (b ControllerBundle) Config() (*Config, error) {
	name, ok := strings.CutPrefix(b.Resource, "bundles/")
	switch {
	case !ok || name == "":
		return nil, fmt.Errorf("opabundles: controller bundle resource %q: want bundles/<name>", b.Resource)
	case b.Unsigned && b.VerificationKey != "":
		return nil, errors.New("opabundles: controller bundle: a verification key and unsigned bundles both configured: choose one")
	case !b.Unsigned && b.VerificationKey == "":
		return nil, errors.New("opabundles: controller bundle: no verification key: give the public key of the controller's --bundle-signing-key, or say that its bundles are unsigned (docs/state-stream.md)")
	}
	bundle := map[string]any{
		"service":  controllerService,
		"resource": b.Resource,
		// Long polling hands a new revision over as soon as the controller
		// serves it; the delays bound the backoff after a failure.
		"polling": map[string]any{"long_polling_timeout_seconds": 60, "min_delay_seconds": 5, "max_delay_seconds": 30},
	}
	cfg := map[string]any{
		"services": map[string]any{controllerService: map[string]any{"url": b.URL, "credentials": map[string]any{"plugin": SVIDPlugin}}},
		"bundles":  map[string]any{name: bundle},
	}
	if !b.Unsigned {
		// A signing block requires a .signatures.json that verifies; its
		// keyid is used whatever key ID the controller's signature names.
		bundle["signing"] = map[string]any{"keyid": controllerKey}
		cfg["keys"] = map[string]any{controllerKey: map[string]any{"algorithm": cmp.Or(b.VerificationAlgorithm, "RS256"), "key": b.VerificationKey}}
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("opabundles: controller bundle: %w", err)
	}
	return ParseConfig(raw)
}
