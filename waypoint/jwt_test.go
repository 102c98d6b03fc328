package waypoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/regomesh/regomesh/policy/istio"
)

// issuer signs tokens with its own key, which it publishes as a JWKS.
type issuer struct {
	name string
	kid  string
	key  *ecdsa.PrivateKey
}

func newIssuer(t *testing.T, name, kid string) *issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{name: name, kid: kid, key: key}
}

func (is *issuer) jwks(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: string(jose.ES256), Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// token signs claims, with iss, sub and a one-hour exp unless given.
func (is *issuer) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	all := map[string]any{"iss": is.name, "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		all[k] = v
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: is.key, KeyID: is.kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(all).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// jwksServer serves a key set over real HTTP on loopback, or 500s while
// failing is set; hits counts the requests.
type jwksServer struct {
	*httptest.Server
	body    atomic.Pointer[string]
	failing atomic.Bool
	hits    atomic.Int64
}

func newJWKSServer(t *testing.T, body string) *jwksServer {
	s := &jwksServer{}
	s.body.Store(&body)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.failing.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, *s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

// The test policies: a RequestAuthentication on the web service with two
// issuers (keys fetched over HTTP, and inline), and an ALLOW of /secure/*
// for alice's tokens beside the harness's /public/* one.
const authnPolicies = `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: web-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: %s
    audiences: [web]
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
  - issuer: inline.test
    jwks: '%s'
    fromHeaders: [{name: x-token}]
    forwardOriginalToken: true
`

const secureAllow = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-secure, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.test/alice"]}}]
    to: [{operation: {paths: ["/secure/*"]}}]
`

func (m *testMesh) loadAuthn(t *testing.T, yaml string, keys *KeySets) {
	t.Helper()
	res, notes, err := istio.DecodeAll(strings.NewReader(yaml), "authn.yaml")
	if err != nil || len(res.RequestAuthentications) == 0 {
		t.Fatalf("decode: %v %v", err, notes)
	}
	a, err := NewAuthn(res.RequestAuthentications, AuthnConfig{Waypoint: "shop/waypoint", Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.WaitFetched(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.wp.SetAuthn(a)
}

func newKeySets(t *testing.T, cfg KeySetsConfig) *KeySets {
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	k := NewKeySets(cfg)
	t.Cleanup(k.Close)
	return k
}

// Requests to the web service carry JWTs of two issuers: valid ones fill
// request.auth (an ALLOW on requestPrincipals lets alice in), leave or keep
// the token as the rule says, and copy the sub claim into a header that a
// client cannot forge; every bad token is Envoy's 401 with its reason;
// no token passes authentication, and policy decides.
func TestRequestAuthentication(t *testing.T) {
	m := newTestMesh(t)
	m.loadIstio(t, istioPolicies+"---"+secureAllow)
	main, inline := newIssuer(t, "https://issuer.test", "k1"), newIssuer(t, "inline.test", "i1")
	srv := newJWKSServer(t, main.jwks(t))
	m.loadAuthn(t, fmt.Sprintf(authnPolicies, srv.URL+"/jwks", inline.jwks(t)), newKeySets(t, KeySetsConfig{}))
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

	t.Run("no token: policy decides", func(t *testing.T) {
		if a := do(t, c, "GET", "http://web.shop/public/a", nil); a.status != http.StatusOK {
			t.Errorf("GET /public/a without a token: %d %q, want 200", a.status, a.body)
		}
		if a := do(t, c, "GET", "http://web.shop/secure/x", nil); a.status != http.StatusForbidden {
			t.Errorf("GET /secure/x without a token: %d %q, want 403 (no request principal)", a.status, a.body)
		}
	})
	t.Run("valid token", func(t *testing.T) {
		a := do(t, c, "GET", "http://web.shop/secure/x", bearer(main.token(t, map[string]any{"aud": "web"})))
		if a.status != http.StatusOK {
			t.Fatalf("GET /secure/x with alice's token: %d %q, want 200", a.status, a.body)
		}
		if got := a.header.Get("X-Seen-Authorization"); got != "" {
			t.Errorf("the backend saw Authorization %q: the token must be removed (forwardOriginalToken is false)", got)
		}
		if got := a.header.Get("X-Seen-X-Jwt-Sub"); got != "alice" {
			t.Errorf("the backend saw x-jwt-sub %q, want alice (outputClaimToHeaders)", got)
		}
	})
	t.Run("forged claim header", func(t *testing.T) {
		a := do(t, c, "GET", "http://web.shop/public/a", map[string]string{"X-Jwt-Sub": "mallory"})
		if a.status != http.StatusOK || a.header.Get("X-Seen-X-Jwt-Sub") != "" {
			t.Errorf("a client's own x-jwt-sub reached the backend: %d, saw %q", a.status, a.header.Get("X-Seen-X-Jwt-Sub"))
		}
	})
	t.Run("inline key set, own header, forwarded", func(t *testing.T) {
		tok := inline.token(t, map[string]any{"sub": "bob"})
		a := do(t, c, "GET", "http://web.shop/public/a", map[string]string{"X-Token": tok})
		if a.status != http.StatusOK || a.header.Get("X-Seen-X-Token") != tok {
			t.Errorf("GET with inline.test's token in x-token: %d, backend saw %q; want 200 and the token forwarded", a.status, a.header.Get("X-Seen-X-Token"))
		}
		// bob is not alice: authenticated, but the ALLOW does not match.
		if a := do(t, c, "GET", "http://web.shop/secure/x", map[string]string{"X-Token": tok}); a.status != http.StatusForbidden {
			t.Errorf("bob on /secure/x: %d, want 403", a.status)
		}
	})
	other := newIssuer(t, "https://issuer.test", "k1") // same name and kid, another key
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   error
	}{
		{"expired", bearer(main.token(t, map[string]any{"aud": "web", "exp": time.Now().Add(-2 * time.Minute).Unix()})), ErrJWTExpired},
		{"not yet valid", bearer(main.token(t, map[string]any{"aud": "web", "nbf": time.Now().Add(2 * time.Minute).Unix()})), ErrJWTNotYetValid},
		{"wrong audience", bearer(main.token(t, map[string]any{"aud": "other"})), ErrJWTAudience},
		{"unknown issuer", bearer(newIssuer(t, "https://elsewhere.test", "e1").token(t, nil)), ErrJWTIssuer},
		{"bad signature", bearer(other.token(t, map[string]any{"aud": "web"})), ErrJWTVerification},
		{"unknown kid", bearer(newIssuer(t, "https://issuer.test", "k9").token(t, map[string]any{"aud": "web"})), ErrJWTNoMatchingKey},
		{"not a JWT", bearer("abc.def"), ErrJWTMalformed},
		{"issuer's token where it does not look", map[string]string{"X-Token": main.token(t, map[string]any{"aud": "web"})}, ErrJWTIssuer},
		{"query parameter", nil, ErrJWTExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := "http://web.shop/public/a"
			if tc.header == nil {
				url += "?access_token=" + main.token(t, map[string]any{"aud": "web", "exp": time.Now().Add(-time.Hour).Unix()})
			}
			before := len(accessLines(t, m))
			a := do(t, c, "GET", url, tc.header)
			if a.status != http.StatusUnauthorized || a.body != tc.want.Error() {
				t.Fatalf("got %d %q, want 401 %q", a.status, a.body, tc.want)
			}
			if !strings.HasPrefix(a.header.Get("Www-Authenticate"), `Bearer realm="http://web.shop/public/a"`) {
				t.Errorf("WWW-Authenticate = %q", a.header.Get("Www-Authenticate"))
			}
			waitRequests(t, m, before+1)
			e := accessLines(t, m)[before]
			if e.Status != http.StatusUnauthorized || e.Flags != FlagJWT || e.Error != tc.want.Error() || e.Decision != "" {
				t.Errorf("access log = %+v, want 401 with flag %s, the reason, and no policy decision", e, FlagJWT)
			}
		})
	}
}

// A key set whose refresh fails keeps serving its last good copy; one
// that never arrived refuses its issuer's tokens with Envoy's reason.
func TestJWKSLastGoodCopy(t *testing.T) {
	m := newTestMesh(t)
	m.loadIstio(t, istioPolicies+"---"+secureAllow)
	main := newIssuer(t, "https://issuer.test", "k1")
	srv := newJWKSServer(t, main.jwks(t))
	keys := newKeySets(t, KeySetsConfig{Refresh: 20 * time.Millisecond, Retry: 10 * time.Millisecond})
	m.loadAuthn(t, fmt.Sprintf(authnPolicies, srv.URL+"/jwks", newIssuer(t, "inline.test", "i1").jwks(t)), keys)
	c := m.http1Client(netip.AddrPortFrom(webVIP, 80))
	tok := map[string]string{"Authorization": "Bearer " + main.token(t, map[string]any{"aud": "web"})}

	srv.failing.Store(true)
	for seen := srv.hits.Load(); srv.hits.Load() < seen+3; {
		time.Sleep(5 * time.Millisecond) // three failed refreshes, not a duration
	}
	if a := do(t, c, "GET", "http://web.shop/secure/x", tok); a.status != http.StatusOK {
		t.Errorf("after failed refreshes: %d %q, want 200 from the last good key set", a.status, a.body)
	}

	down := newJWKSServer(t, main.jwks(t))
	down.failing.Store(true)
	m.loadAuthn(t, fmt.Sprintf(authnPolicies, down.URL+"/jwks", newIssuer(t, "inline.test", "i1").jwks(t)), newKeySets(t, KeySetsConfig{}))
	if a := do(t, c, "GET", "http://web.shop/secure/x", tok); a.status != http.StatusUnauthorized || a.body != ErrJWKSFetch.Error() {
		t.Errorf("key set never fetched: %d %q, want 401 %q", a.status, a.body, ErrJWKSFetch)
	}
}

// A set of RequestAuthentications with an inline key set that is not one,
// or a rule with no key at all, is refused whole.
func TestNewAuthnRefusesBadKeySets(t *testing.T) {
	for name, rule := range map[string]string{
		"inline not a JWKS": `{issuer: a.test, jwks: "{\"keys\": 3}"}`,
		"inline empty":      `{issuer: a.test, jwks: "{\"keys\": []}"}`,
		"no key":            `{issuer: a.test}`,
	} {
		t.Run(name, func(t *testing.T) {
			yaml := "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: shop}\nspec:\n  jwtRules: [" + rule + "]\n"
			res, _, err := istio.DecodeAll(strings.NewReader(yaml), "ra.yaml")
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewAuthn(res.RequestAuthentications, AuthnConfig{Keys: newKeySets(t, KeySetsConfig{})})
			if err == nil || !strings.Contains(err.Error(), "ra.yaml:1: RequestAuthentication shop/r: spec.jwtRules[0]") {
				t.Errorf("NewAuthn: %v, want a refusal naming the file and the rule", err)
			}
		})
	}
}
