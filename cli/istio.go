package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

// istioFlags name AuthorizationPolicy and PeerAuthentication YAML and how
// to translate it.
type istioFlags struct {
	paths         []string
	rootNamespace string
	trustDomain   string
	aliases       []string
	providers     []string
	waypoint      string
	// translatedDir is where the translation was written, to show its
	// file names as "translated:<file>" rather than a deleted temp path.
	translatedDir string
}

// displayLocation names a location in translated Rego readably.
func (f *istioFlags) displayLocation(loc string) string {
	if f.translatedDir == "" {
		return loc
	}
	return strings.Replace(loc, f.translatedDir+string(filepath.Separator), "translated:", 1)
}

func (f *istioFlags) register(flags *pflag.FlagSet) {
	flags.StringArrayVar(&f.paths, "policies", nil, "Kubernetes YAML file or directory of AuthorizationPolicies and PeerAuthentications (repeatable; RequestAuthentications are validated, other kinds are skipped with a note)")
	f.registerOptions(flags)
}

func (f *istioFlags) registerOptions(flags *pflag.FlagSet) {
	flags.StringVar(&f.rootNamespace, "root-namespace", "istio-system", "Istio root namespace: its policies without a selector apply mesh-wide")
	flags.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "the mesh's trust domain")
	flags.StringArrayVar(&f.aliases, "trust-domain-alias", nil, "another trust domain principals also match in (repeatable)")
	flags.StringArrayVar(&f.providers, "provider", nil, "CUSTOM provider the bundles supply as data.mesh.providers[NAME].allow (repeatable)")
	flags.StringVar(&f.waypoint, "waypoint", "", "NAMESPACE/NAME of the waypoint Gateway to translate for (policies targeting it apply)")
}

func (f *istioFlags) options() istio.Options {
	return istio.Options{RootNamespace: f.rootNamespace, TrustDomain: f.trustDomain, TrustDomainAliases: f.aliases,
		Providers: f.providers, Waypoint: f.waypoint}
}

// decodePolicies reads every AuthorizationPolicy, PeerAuthentication and
// RequestAuthentication in the files and directories (istio.DecodeFiles),
// with notes on what was skipped.
func decodePolicies(paths []string) (*istio.Resources, []string, error) {
	res, ns, err := istio.DecodeFiles(paths)
	var notes []string
	for _, n := range ns {
		notes = append(notes, n.String())
	}
	return res, notes, err
}

// empty says whether res holds no resource at all.
func empty(res *istio.Resources) bool {
	return len(res.AuthorizationPolicies)+len(res.PeerAuthentications) == 0
}

// translated turns the --policies into a bundle, returning its warnings
// (translation caveats and decode notes) for the output.
func (f *istioFlags) translated() (*policy.Bundle, []string, error) {
	if len(f.paths) == 0 {
		return nil, nil, nil
	}
	res, notes, err := decodePolicies(f.paths)
	if err != nil {
		return nil, nil, err
	}
	if empty(res) {
		return nil, nil, fmt.Errorf("--policies: %w", noPolicies(f.paths, notes))
	}
	tr, err := istio.TranslateAll(res, f.options())
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "regomesh-istio-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir) // the bundle is read into memory below
	f.translatedDir = dir
	if err := tr.WriteBundleDir(dir); err != nil {
		return nil, nil, err
	}
	b, err := policy.ReadBundle(dir, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("translated bundle: %w", err)
	}
	b.Name = "istio-authorizationpolicies"
	warnings := notes
	for _, w := range tr.Warnings {
		warnings = append(warnings, w.String())
	}
	return b, warnings, nil
}
