package policy

import (
	"slices"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// NewBundle makes a Bundle of one OPA's bundle reader has already read and
// verified, such as the Update.Bundle of OPA's v1/download, named name (an
// OPA configuration's bundle name). It applies the checks ReadBundle
// applies to files: not a delta bundle, regomesh's library left alone, not
// empty unless its manifest says so. raw must not change afterwards.
// Errors wrap ErrBundle.
func NewBundle(name string, raw *bundle.Bundle) (*Bundle, error) {
	if raw.Type() == bundle.DeltaBundleType {
		return nil, &bundleError{names: []string{name}, detail: "is a delta bundle (patch.json)",
			hint: "serve snapshot bundles: every activation starts from an empty store"}
	}
	if raw.Manifest.Roots == nil {
		raw.Manifest.Init() // no roots: the bundle owns everything, as the reader would say
	}
	b := &Bundle{Name: name, Revision: raw.Manifest.Revision, Roots: slices.Clone(*raw.Manifest.Roots), raw: raw}
	if err := b.checkLibraryOwnership(); err != nil {
		return nil, err
	}
	if err := b.checkNotEmpty(); err != nil {
		return nil, err
	}
	b.warnings = b.lint()
	return b, nil
}
