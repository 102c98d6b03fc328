package istio

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	apiv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RequestAuthentication is one security.istio.io RequestAuthentication in
// the translator's terms: the JWTs that requests to the workloads it
// applies to may carry. A request without a token passes it (an
// AuthorizationPolicy on requestPrincipals can refuse that); a request
// with a token that none of its rules validates is refused with 401.
// Waypoints enforce it (see docs/request-authentication.md).
type RequestAuthentication struct {
	Namespace string
	Name      string
	// Selector is spec.selector.matchLabels; nil when spec.selector is absent.
	Selector map[string]string
	// TargetRefs are spec.targetRefs, and the deprecated spec.targetRef.
	TargetRefs []TargetRef
	// JWTRules are spec.jwtRules, one per issuer.
	JWTRules []JWTRule

	// Origin, file and lines locate the resource for messages, as in Policy.
	Origin string
	file   string
	lines  *lineIndex
}

// JWTRule is one spec.jwtRules[] entry: an issuer, where its keys are,
// where its tokens travel and what is done with them once validated.
type JWTRule struct {
	Issuer string
	// Audiences the token's aud must share one with; empty accepts any.
	Audiences []string
	// JWKSURI is where the issuer's JSON Web Key Set is (https, http or
	// file URL); JWKS is the set inline, which wins when both are set.
	JWKSURI string
	JWKS    string
	// FromHeaders and FromParams are where tokens are looked for; both
	// empty means "Authorization: Bearer <token>" and ?access_token=.
	FromHeaders []JWTHeader
	FromParams  []string
	// ForwardOriginalToken keeps the token in the request sent upstream;
	// by default it is removed once validated.
	ForwardOriginalToken bool
	// OutputPayloadToHeader names a header that receives the validated
	// payload (base64url); OutputClaimToHeaders copy single claims.
	OutputPayloadToHeader string
	OutputClaimToHeaders  []ClaimToHeader
}

// JWTHeader is a header a token travels in, after Prefix ("Bearer ").
type JWTHeader struct{ Name, Prefix string }

// ClaimToHeader copies a validated token's claim (a string, number or
// boolean; "a.b" for a nested one) into a request header.
type ClaimToHeader struct{ Header, Claim string }

// ID is the resource's name in messages: "<namespace>/<name>".
func (ra *RequestAuthentication) ID() string { return ra.Namespace + "/" + ra.Name }

func (ra *RequestAuthentication) position(field string) string {
	return positionIn(ra.file, ra.lines, field, ra.Origin)
}

// ConvertRequestAuthentication turns a RequestAuthentication as the
// Kubernetes API serves it (client-go's security.istio.io/v1 type) into
// the translator's type. Validate the result
// (ValidateRequestAuthentication) before use.
func ConvertRequestAuthentication(obj *clientv1.RequestAuthentication) *RequestAuthentication {
	return convertRequestAuthn(&obj.ObjectMeta, &obj.Spec, &RequestAuthentication{})
}

func convertRequestAuthn(meta *metav1.ObjectMeta, spec *apiv1beta1.RequestAuthentication, at *RequestAuthentication) *RequestAuthentication {
	ra := &RequestAuthentication{
		Namespace: meta.Namespace, Name: meta.Name,
		Origin: at.Origin, file: at.file, lines: at.lines,
	}
	if sel := spec.GetSelector(); sel != nil {
		ra.Selector = maps.Clone(sel.GetMatchLabels())
		if ra.Selector == nil {
			ra.Selector = map[string]string{}
		}
	}
	refs := spec.GetTargetRefs()
	if ref := spec.GetTargetRef(); ref != nil {
		refs = append([]*typev1beta1.PolicyTargetReference{ref}, refs...)
	}
	for _, ref := range refs {
		ra.TargetRefs = append(ra.TargetRefs, TargetRef{Group: ref.GetGroup(), Kind: ref.GetKind(), Name: ref.GetName(), Namespace: ref.GetNamespace()})
	}
	for _, r := range spec.GetJwtRules() {
		rule := JWTRule{
			Issuer: r.GetIssuer(), Audiences: slices.Clone(r.GetAudiences()),
			JWKSURI: r.GetJwksUri(), JWKS: r.GetJwks(), FromParams: slices.Clone(r.GetFromParams()),
			ForwardOriginalToken: r.GetForwardOriginalToken(), OutputPayloadToHeader: r.GetOutputPayloadToHeader(),
		}
		for _, h := range r.GetFromHeaders() {
			rule.FromHeaders = append(rule.FromHeaders, JWTHeader{Name: h.GetName(), Prefix: h.GetPrefix()})
		}
		for _, c := range r.GetOutputClaimToHeaders() {
			rule.OutputClaimToHeaders = append(rule.OutputClaimToHeaders, ClaimToHeader{Header: c.GetHeader(), Claim: c.GetClaim()})
		}
		ra.JWTRules = append(ra.JWTRules, rule)
	}
	return ra
}

// ValidateRequestAuthentication reports every reason Istio's admission
// would refuse ra (ValidateRequestAuthentication in Istio): a rule without
// an issuer, two rules for one issuer, a jwksUri that is not an http,
// https or file URL, a header without a name, an outputClaimToHeaders
// entry without a valid header or a claim; a selector with targetRefs;
// and names that are not Kubernetes names. Errors are FieldErrors
// (errors.Is(err, ErrInvalid)) naming the file and line.
func ValidateRequestAuthentication(ra *RequestAuthentication) error {
	ps := &problems{p: ra, kind: ErrInvalid}
	validateNames(ra.Namespace, ra.Name, ps)
	validateSelector(ra.Selector, ps)
	if ra.Selector != nil && len(ra.TargetRefs) > 0 {
		ps.add("spec", "only one of targetRefs or selector can be set")
	}
	for i, ref := range ra.TargetRefs {
		validateTargetRef(ref, fmt.Sprintf("spec.targetRefs[%d]", i), ps)
	}
	issuers := map[string]int{}
	for i, r := range ra.JWTRules {
		at := fmt.Sprintf("spec.jwtRules[%d]", i)
		switch first, seen := issuers[r.Issuer]; {
		case r.Issuer == "":
			ps.add(at+".issuer", "issuer must be set")
		case seen:
			ps.add(at+".issuer", "issuer %q is already configured by spec.jwtRules[%d]", r.Issuer, first)
		default:
			issuers[r.Issuer] = i
		}
		if r.JWKSURI != "" {
			if err := checkJWKSURI(r.JWKSURI); err != nil {
				ps.add(at+".jwksUri", "%v", err)
			}
		}
		for j, h := range r.FromHeaders {
			if h.Name == "" {
				ps.add(fmt.Sprintf("%s.fromHeaders[%d].name", at, j), "location header name must be non-empty")
			}
		}
		for j, p := range r.FromParams {
			if p == "" {
				ps.add(fmt.Sprintf("%s.fromParams[%d]", at, j), "location query must be non-empty")
			}
		}
		for j, c := range r.OutputClaimToHeaders {
			field := fmt.Sprintf("%s.outputClaimToHeaders[%d]", at, j)
			if !validHeaderName(c.Header) {
				ps.add(field+".header", "invalid header name %q", c.Header)
			}
			if c.Claim == "" {
				ps.add(field+".claim", "claim must be non-empty")
			}
		}
		if r.OutputPayloadToHeader != "" && !validHeaderName(r.OutputPayloadToHeader) {
			ps.add(at+".outputPayloadToHeader", "invalid header name %q", r.OutputPayloadToHeader)
		}
	}
	return ps.err()
}

// checkJWKSURI accepts the URLs a waypoint can fetch a key set from.
func checkJWKSURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("invalid URL %q: %v", raw, err)
	}
	switch u.Scheme {
	case "https", "http":
		if u.Host == "" {
			return fmt.Errorf("URL %q has no host", raw)
		}
	case "file":
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("file URL %q needs an absolute path (file:///etc/jwks.json)", raw)
		}
	default:
		return fmt.Errorf("URL %q: scheme must be https, http or file", raw)
	}
	return nil
}

// validHeaderName is an HTTP token (RFC 9110), not a pseudo-header.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if c >= 0x7f || c <= ' ' || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// AppliesTo says whether ra applies, in a waypoint, to a request whose
// destination (the input document's) is in namespace, labelled labels, of
// service host (empty for a workload address), the waypoint being
// "<namespace>/<name>" of its Gateway. The rules are AuthorizationPolicy's:
// root namespace without selector is mesh-wide, a selector picks workloads
// of ra's namespace (of every namespace from the root namespace), and
// targetRefs attach to requests to a Service, to the waypoint's Gateway, or
// to every waypoint (GatewayClass istio-waypoint from the root namespace).
func (ra *RequestAuthentication) AppliesTo(opts Options, waypoint, namespace string, labels map[string]string, service string) bool {
	opts = opts.withDefaults()
	root := ra.Namespace == opts.RootNamespace
	if len(ra.TargetRefs) > 0 {
		for _, ref := range ra.TargetRefs {
			switch targetKind(ref) {
			case kindService:
				if service == fmt.Sprintf("%s.%s.svc.%s", ref.Name, ra.Namespace, opts.ClusterDomain) {
					return true
				}
			case kindGateway:
				if waypoint == ra.Namespace+"/"+ref.Name {
					return true
				}
			case kindGatewayClass:
				if ref.Name == waypointClass && root {
					return true
				}
			}
		}
		return false
	}
	if !root && namespace != ra.Namespace {
		return false
	}
	for k, v := range ra.Selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
