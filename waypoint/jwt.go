package waypoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

// The reasons a request's JWT is refused, as Envoy's jwt_authn filter words
// them in its 401 bodies (Istio's users see these today).
var (
	ErrJWTMalformed     = errors.New("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
	ErrJWTIssuer        = errors.New("Jwt issuer is not configured")
	ErrJWTVerification  = errors.New("Jwt verification fails")
	ErrJWTExpired       = errors.New("Jwt is expired")
	ErrJWTNotYetValid   = errors.New("Jwt not yet valid")
	ErrJWTAudience      = errors.New("Audiences in Jwt are not allowed")
	ErrJWTNoMatchingKey = errors.New("Jwks doesn't have key to match kid or alg from Jwt")
	ErrJWKSFetch        = errors.New("Jwks remote fetch is failed")
)

// clockSkew is how far exp and nbf may be off, Envoy's default.
const clockSkew = 60 * time.Second

// signatureAlgorithms are those a JWKS key may verify: Envoy's list.
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// Authn validates the JWTs requests carry, against the
// RequestAuthentications that apply to each request's destination, as
// Istio's waypoints do with Envoy's jwt_authn filter:
//
//   - a request without a token passes, with no request.auth (an
//     AuthorizationPolicy on requestPrincipals can refuse it);
//   - a token that no applicable rule validates (unknown issuer, bad
//     signature, expired, wrong audience) is refused with 401;
//   - a validated token fills request.auth, is removed from its header
//     unless the rule forwards it, and copies the claims the rule names
//     into headers (any such header the client sent is removed first).
//
// Authn is immutable; its key sets refresh in the background until Close.
type Authn struct {
	opts     istio.Options
	waypoint string
	policies []*istio.RequestAuthentication
	keys     *KeySets
	now      func() time.Time
}

// AuthnConfig configures NewAuthn.
type AuthnConfig struct {
	// Options are the mesh's (root namespace, cluster domain), for which
	// policies apply where.
	Options istio.Options
	// Waypoint is "<namespace>/<name>" of the waypoint's Gateway:
	// policies whose targetRefs name it apply here.
	Waypoint string
	// Keys fetches and caches the rules' key sets; required.
	Keys *KeySets
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// NewAuthn validates policies and registers each rule's key set with
// cfg.Keys. An invalid policy or an inline JWKS that does not parse fails
// the whole set, so that the caller keeps the last good one.
func NewAuthn(policies []*istio.RequestAuthentication, cfg AuthnConfig) (*Authn, error) {
	if cfg.Keys == nil {
		return nil, errors.New("waypoint: NewAuthn needs a KeySets")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var errs []error
	for _, ra := range policies {
		if err := istio.ValidateRequestAuthentication(ra); err != nil {
			errs = append(errs, err)
			continue
		}
		for i, r := range ra.JWTRules {
			if err := cfg.Keys.register(r); err != nil {
				errs = append(errs, fmt.Errorf("%s: RequestAuthentication %s: spec.jwtRules[%d]: %w", ra.Origin, ra.ID(), i, err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Authn{opts: cfg.Options, waypoint: cfg.Waypoint, policies: policies, keys: cfg.Keys, now: cfg.Now}, nil
}

// Policies are the RequestAuthentications in force.
func (a *Authn) Policies() []*istio.RequestAuthentication { return a.policies }

// rules are the JWT rules of every policy that applies to dst.
func (a *Authn) rules(dst policy.Destination) []istio.JWTRule {
	var out []istio.JWTRule
	for _, ra := range a.policies {
		if ra.AppliesTo(a.opts, a.waypoint, dst.Namespace, dst.Labels, dst.Service) {
			out = append(out, ra.JWTRules...)
		}
	}
	return out
}

// token is one JWT found in a request, and where.
type token struct {
	raw    string
	header string // the header it came in, or ""
	param  string // the query parameter it came in, or ""
}

// Authenticate validates the JWTs r carries for a request to dst. It
// returns nil, nil for a request with no token where any applicable rule
// looks; the validated token's request.auth; or the reason to refuse it
// with 401. On success it edits r's headers as the rule says.
func (a *Authn) Authenticate(r *http.Request, dst policy.Destination) (*policy.Auth, error) {
	rules := a.rules(dst)
	if len(rules) == 0 {
		return nil, nil
	}
	for _, rule := range rules {
		for _, c := range rule.OutputClaimToHeaders {
			r.Header.Del(c.Header) // only a validated token sets these
		}
		if rule.OutputPayloadToHeader != "" {
			r.Header.Del(rule.OutputPayloadToHeader)
		}
	}
	tokens := findTokens(r, rules)
	if len(tokens) == 0 {
		return nil, nil
	}
	var auth *policy.Auth
	for _, t := range tokens {
		got, err := a.validate(r, t, rules)
		if err != nil {
			return nil, err
		}
		if auth == nil {
			auth = got
		}
	}
	return auth, nil
}

// validate checks one token against the rule of its issuer that looks
// where it was found, and applies the rule's outputs to r.
func (a *Authn) validate(r *http.Request, t token, rules []istio.JWTRule) (*policy.Auth, error) {
	if strings.Count(t.raw, ".") != 2 {
		return nil, ErrJWTMalformed
	}
	tok, err := jwt.ParseSigned(t.raw, signatureAlgorithms)
	if err != nil || len(tok.Headers) != 1 {
		return nil, ErrJWTMalformed
	}
	var unverified struct {
		Issuer string `json:"iss"`
	}
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, ErrJWTMalformed
	}
	i := slices.IndexFunc(rules, func(rule istio.JWTRule) bool { return rule.Issuer == unverified.Issuer && looksAt(rule, t) })
	if i < 0 {
		return nil, ErrJWTIssuer
	}
	rule := rules[i]
	set, err := a.keys.get(rule)
	if err != nil {
		return nil, err
	}
	claims, err := verify(tok, set)
	if err != nil {
		return nil, err
	}
	if err := a.checkTimes(claims); err != nil {
		return nil, err
	}
	audiences := stringOrList(claims["aud"])
	if len(rule.Audiences) > 0 && !slices.ContainsFunc(audiences, func(aud string) bool { return slices.Contains(rule.Audiences, aud) }) {
		return nil, ErrJWTAudience
	}
	sub, _ := claims["sub"].(string)
	azp, _ := claims["azp"].(string)
	applyOutputs(r, rule, t, claims)
	return &policy.Auth{Principal: unverified.Issuer + "/" + sub, Audiences: audiences, Presenter: azp, Claims: claims}, nil
}

// verify checks the signature with the keys of set that match the
// token's kid (every key when it names none) and algorithm.
func verify(tok *jwt.JSONWebToken, set *jose.JSONWebKeySet) (map[string]any, error) {
	h := tok.Headers[0]
	tried := false
	for _, key := range set.Keys {
		if (h.KeyID != "" && key.KeyID != h.KeyID) || (key.Algorithm != "" && key.Algorithm != h.Algorithm) || key.Use == "enc" {
			continue
		}
		tried = true
		var claims map[string]any
		if err := tok.Claims(key.Key, &claims); err == nil {
			return claims, nil
		}
	}
	if !tried {
		return nil, ErrJWTNoMatchingKey
	}
	return nil, ErrJWTVerification
}

func (a *Authn) checkTimes(claims map[string]any) error {
	now := a.now()
	if exp, ok := numericDate(claims["exp"]); ok && now.After(exp.Add(clockSkew)) {
		return ErrJWTExpired
	}
	if nbf, ok := numericDate(claims["nbf"]); ok && now.Add(clockSkew).Before(nbf) {
		return ErrJWTNotYetValid
	}
	return nil
}

func numericDate(v any) (time.Time, bool) {
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

func stringOrList(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// Where a rule looks for tokens by default: Istio's.
const (
	defaultTokenHeader = "Authorization"
	defaultTokenPrefix = "Bearer "
	defaultTokenParam  = "access_token"
)

// headers and params are where rule looks for tokens.
func locations(rule istio.JWTRule) (headers []istio.JWTHeader, params []string) {
	if len(rule.FromHeaders) == 0 && len(rule.FromParams) == 0 {
		return []istio.JWTHeader{{Name: defaultTokenHeader, Prefix: defaultTokenPrefix}}, []string{defaultTokenParam}
	}
	return rule.FromHeaders, rule.FromParams
}

func looksAt(rule istio.JWTRule, t token) bool {
	headers, params := locations(rule)
	if t.header != "" {
		return slices.ContainsFunc(headers, func(h istio.JWTHeader) bool { return strings.EqualFold(h.Name, t.header) })
	}
	return slices.Contains(params, t.param)
}

// findTokens collects the tokens in every place an applicable rule looks,
// each place once.
func findTokens(r *http.Request, rules []istio.JWTRule) []token {
	var out []token
	seen := map[string]bool{}
	query := r.URL.Query()
	for _, rule := range rules {
		headers, params := locations(rule)
		for _, h := range headers {
			key := "h:" + http.CanonicalHeaderKey(h.Name) + "\x00" + h.Prefix
			if seen[key] {
				continue
			}
			seen[key] = true
			v := r.Header.Get(h.Name)
			if v == "" {
				continue
			}
			raw, ok := cutPrefixFold(v, h.Prefix)
			if !ok {
				continue // Envoy skips a header without the prefix
			}
			out = append(out, token{raw: strings.TrimSpace(raw), header: h.Name})
		}
		for _, p := range params {
			if seen["p:"+p] {
				continue
			}
			seen["p:"+p] = true
			if v := query.Get(p); v != "" {
				out = append(out, token{raw: v, param: p})
			}
		}
	}
	return out
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// applyOutputs edits r as the rule asks once t is validated: the token
// leaves its header unless forwarded, and claims become headers.
func applyOutputs(r *http.Request, rule istio.JWTRule, t token, claims map[string]any) {
	if !rule.ForwardOriginalToken && t.header != "" {
		r.Header.Del(t.header)
	}
	if rule.OutputPayloadToHeader != "" {
		if parts := strings.Split(t.raw, "."); len(parts) == 3 {
			r.Header.Set(rule.OutputPayloadToHeader, parts[1])
		}
	}
	for _, c := range rule.OutputClaimToHeaders {
		if v, ok := claimText(claims, c.Claim); ok {
			r.Header.Set(c.Header, v)
		}
	}
}

// claimText is a string, number or boolean claim as header text; "a.b"
// names claim b inside object claim a, as Istio's nested claims do.
func claimText(claims map[string]any, name string) (string, bool) {
	var v any = claims
	for part := range strings.SplitSeq(name, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[part]; !ok {
			return "", false
		}
	}
	switch v := v.(type) {
	case string:
		return v, true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	case json.Number:
		return v.String(), true
	}
	return "", false
}

// unauthenticated answers a request whose token was refused: 401 with
// Envoy's reason and WWW-Authenticate, or gRPC UNAUTHENTICATED.
func unauthenticated(rw http.ResponseWriter, r *http.Request, grpc bool, reason error) {
	if grpc {
		grpcStatus(rw, grpcUnauthenticated, reason.Error())
		return
	}
	rw.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s%s", error="invalid_token"`, r.Host, r.URL.Path))
	plain(rw, http.StatusUnauthorized, reason.Error())
}
