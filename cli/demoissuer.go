package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// demoIssuerName is the demo's identity provider, whose tokens the shop's
// waypoint validates.
const demoIssuerName = "https://auth.shop.example"

// demoIssuer is the demo's stand-in for an identity provider: a key made
// for this run, published as a JWKS file the waypoint reads (a jwksUri of
// scheme file), and the RequestAuthentication that names it.
type demoIssuer struct {
	signer jose.Signer
	// RequestAuthentication is the YAML file for waypoint
	// --request-authentication.
	RequestAuthentication string
}

// newDemoIssuer makes the key and writes jwks.json and
// request-authentication.yaml into dir.
func newDemoIssuer(dir string) (*demoIssuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "demo"}}, nil)
	if err != nil {
		return nil, err
	}
	jwks, err := json.MarshalIndent(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &key.PublicKey, KeyID: "demo", Algorithm: string(jose.ES256), Use: "sig"},
	}}, "", "  ")
	if err != nil {
		return nil, err
	}
	jwksPath := filepath.Join(dir, "jwks.json")
	ra := filepath.Join(dir, "request-authentication.yaml")
	if err := writeNew(jwksPath, jwks); err != nil {
		return nil, err
	}
	yaml := fmt.Sprintf(`# The api service accepts JWTs of the demo's issuer (docs/request-authentication.md).
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: api-jwt, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: api}]
  jwtRules:
  - issuer: %s
    jwksUri: file://%s
    outputClaimToHeaders: [{header: x-user, claim: sub}]
`, demoIssuerName, jwksPath)
	if err := writeNew(ra, []byte(yaml)); err != nil {
		return nil, err
	}
	return &demoIssuer{signer: signer, RequestAuthentication: ra}, nil
}

// token signs a token for sub that expires at exp.
func (d *demoIssuer) token(sub string, exp time.Time) (string, error) {
	return jwt.Signed(d.signer).Claims(map[string]any{
		"iss": demoIssuerName, "sub": sub, "iat": time.Now().Unix(), "exp": exp.Unix(),
	}).Serialize()
}

func writeNew(path string, data []byte) error {
	f, err := createNew(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
