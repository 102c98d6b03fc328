package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/regomesh/regomesh/policy"
)

// policySources are the flags naming what to decide with.
type policySources struct {
	istio             istioFlags
	bundles           []string
	verificationKey   string
	verificationAlg   string
	verificationKeyID string
}

func (s *policySources) register(flags *pflag.FlagSet) {
	s.istio.register(flags)
	flags.StringArrayVar(&s.bundles, "bundle", nil, "OPA bundle directory or .tar.gz to decide with (repeatable; roots must be disjoint)")
	flags.StringVar(&s.verificationKey, "verification-key", "", "PEM public key (or HMAC secret file) every bundle's .signatures.json must verify against")
	flags.StringVar(&s.verificationAlg, "verification-alg", "RS256", "algorithm of --verification-key (RS256, ES256, HS256, ...)")
	flags.StringVar(&s.verificationKeyID, "key-id", "default", "key ID of --verification-key")
}

// verification builds the signature configuration, nil without a key.
func (s *policySources) verification() (*policy.Verification, error) {
	if s.verificationKey == "" {
		return nil, nil
	}
	key, err := policy.ReadVerificationKey(s.verificationKey, s.verificationAlg)
	if err != nil {
		return nil, err
	}
	return &policy.Verification{Keys: map[string]policy.VerificationKey{s.verificationKeyID: key}, KeyID: s.verificationKeyID}, nil
}

// readBundles reads every --bundle, and the --policies translated; the
// warnings are the translation's and the bundles' (rules the library
// would ignore).
func (s *policySources) readBundles() ([]*policy.Bundle, []string, error) {
	if len(s.bundles) == 0 && len(s.istio.paths) == 0 {
		return nil, nil, fmt.Errorf("no policy given: pass --policies PATH (AuthorizationPolicy YAML) or --bundle PATH (an OPA bundle directory or .tar.gz)")
	}
	v, err := s.verification()
	if err != nil {
		return nil, nil, err
	}
	translated, warnings, err := s.istio.translated()
	if err != nil {
		return nil, nil, err
	}
	var out []*policy.Bundle
	if translated != nil {
		out = append(out, translated)
	}
	read, err := policy.ReadBundles(s.bundles, v)
	if err != nil {
		return nil, nil, err
	}
	out = append(out, read...)
	for _, b := range out {
		warnings = append(warnings, b.Warnings()...)
	}
	return out, warnings, nil
}

// engine loads the sources into a new engine; warnings are the
// translation's.
func (s *policySources) engine(ctx context.Context) (*policy.Engine, []string, error) {
	bundles, warnings, err := s.readBundles()
	if err != nil {
		return nil, nil, err
	}
	e, err := loadEngine(ctx, bundles)
	return e, warnings, err
}

func loadEngine(ctx context.Context, bundles []*policy.Bundle) (*policy.Engine, error) {
	e, err := policy.NewEngine(policy.Config{Logger: quietLogger(), CacheSize: -1})
	if err != nil {
		return nil, err
	}
	if err := e.Load(ctx, bundles...); err != nil {
		return nil, err
	}
	return e, nil
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
