package bundleserver

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// DefaultAlgorithm signs bundles when the configuration names no
// algorithm, as in OPA.
const DefaultAlgorithm = "RS256"

// DefaultKeyID names the signing key in every signature (the JWT's kid
// header and its keyid claim) unless configured otherwise. A verifier
// configured with a key of this ID, or with keyid set to any ID it holds
// the public key under, accepts the signatures.
const DefaultKeyID = "regomesh"

// Signer signs bundles as `opa build --signing-key` does, with OPA's own
// bundle package, so stock OPA verifies them. It is read once, at start:
// a new key takes a restart.
type Signer struct {
	cfg   *bundle.SigningConfig
	keyID string
}

// algorithms are those a PEM private key signs with; HMAC secrets are
// left out: a secret every verifier must hold can sign too.
var algorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// NewSigner returns a signer with keyPEM, a PEM private key (PKCS #1,
// PKCS #8 or SEC 1) fit for algorithm (default RS256), naming it keyID
// (default DefaultKeyID). It signs a bundle once to refuse a key that
// cannot sign, rather than fail on the first policy.
func NewSigner(keyPEM []byte, algorithm, keyID string) (*Signer, error) {
	algorithm = cmp.Or(algorithm, DefaultAlgorithm)
	if !supported(algorithm) {
		return nil, fmt.Errorf("bundleserver: signing algorithm %q: use one of %s", algorithm, strings.Join(algorithms, ", "))
	}
	if !strings.Contains(string(keyPEM), "PRIVATE KEY-----") {
		return nil, errors.New("bundleserver: the signing key is not a PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)")
	}
	s := &Signer{cfg: bundle.NewSigningConfig(string(keyPEM), algorithm, ""), keyID: cmp.Or(keyID, DefaultKeyID)}
	probe := bundle.Bundle{Manifest: bundle.Manifest{Revision: "probe"}, Data: map[string]any{}}
	if err := s.sign(&probe); err != nil {
		return nil, err
	}
	return s, nil
}

// ReadSigner reads the PEM private key file path (in Kubernetes, a
// Secret mounted as a file) and returns NewSigner's signer.
func ReadSigner(path, algorithm, keyID string) (*Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bundleserver: signing key: %w", err)
	}
	s, err := NewSigner(pem, algorithm, keyID)
	if err != nil {
		return nil, fmt.Errorf("%w (key file %s)", err, path)
	}
	return s, nil
}

// KeyID is the key ID every signature names.
func (s *Signer) KeyID() string { return s.keyID }

// Algorithm is the JWS algorithm of every signature.
func (s *Signer) Algorithm() string { return s.cfg.Algorithm }

// sign adds b's .signatures.json: one JWT over the hashes of every file
// the bundle's writer writes, module paths as written (not module
// paths on disk), as opa build does.
func (s *Signer) sign(b *bundle.Bundle) error {
	if err := b.GenerateSignature(s.cfg, s.keyID, false); err != nil {
		return fmt.Errorf("bundleserver: sign with a %s key: %w", s.cfg.Algorithm, err)
	}
	return nil
}

func supported(alg string) bool {
	for _, a := range algorithms {
		if a == alg {
			return true
		}
	}
	return false
}
