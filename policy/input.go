package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"
)

// Layer says which proxy asks: ztunnel decides at L4, a waypoint at L7.
type Layer string

const (
	// L4 decisions see identities, addresses and ports only (ztunnel).
	L4 Layer = "l4"
	// L7 decisions also see the HTTP request (waypoint).
	L7 Layer = "l7"
)

// Input is the document every decision evaluates: the public contract for
// Rego authors (docs/policy-input.md). Empty strings and zero
// ports are absent in the JSON form, so a plaintext connection has no
// source.principal, as policies expect.
type Input struct {
	Layer       Layer       `json:"layer"`
	Source      Source      `json:"source"`
	Destination Destination `json:"destination"`
	Connection  Connection  `json:"connection"`
	// Request is nil at L4 and required at L7.
	Request *Request `json:"request,omitempty"`

	// valid holds the addresses Prepare has found valid, so that an input
	// prepared once and decided many times (a waypoint's tunnel, for each
	// of its requests) is not parsed again; a field changed since is
	// checked anew.
	valid validAddrs
}

// validAddrs are address strings Prepare parsed without error.
type validAddrs struct{ source, destination, remote string }

// Source is the peer that opened the connection.
type Source struct {
	// Principal is the peer's SPIFFE ID, absent for plaintext peers.
	Principal string `json:"principal,omitempty"`
	// TrustDomain, Namespace and ServiceAccount come from Principal
	// (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>); the
	// engine derives them, and refuses values that disagree with it or that
	// are set without a principal, since only an authenticated identity
	// can tell them.
	TrustDomain    string `json:"trust_domain,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"`
	IP             string `json:"ip,omitempty"`
	Port           int    `json:"port,omitempty"`
	// RemoteIP is the original client's address when a proxy forwarded the
	// connection (Forwarded / X-Forwarded-For, as trusted by the waypoint);
	// the engine sets it to IP when absent. AuthorizationPolicy
	// remoteIpBlocks and remote.ip match it.
	RemoteIP string `json:"remote_ip,omitempty"`
}

// Destination is the workload the connection or request is for.
type Destination struct {
	IP             string            `json:"ip,omitempty"`
	Port           int               `json:"port,omitempty"`
	Namespace      string            `json:"namespace,omitempty"`
	Workload       string            `json:"workload,omitempty"`
	ServiceAccount string            `json:"service_account,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Service        string            `json:"service,omitempty"`
}

// Connection describes the transport.
type Connection struct {
	MTLS bool   `json:"mtls"`
	SNI  string `json:"sni,omitempty"`
}

// Request is the HTTP request seen by a waypoint.
type Request struct {
	Method string `json:"method,omitempty"`
	// Path is the request target as received, query included.
	Path string `json:"path,omitempty"`
	// URLPath is derived by the engine from Path (normalized as Istio does,
	// query removed); callers need not set it and policies match on it.
	URLPath  string `json:"url_path,omitempty"`
	Host     string `json:"host,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	// Headers are keyed by lower-case name; Prepare lower-cases them.
	Headers map[string]string `json:"headers,omitempty"`
	// HTTPHeader is the other way to give the headers, for a proxy that
	// holds them as net/http does (canonical names, repeated values), and
	// is read when Headers is nil. The engine then looks a header up only
	// when a rule reads it, and builds the headers document (HeadersOf)
	// only where the whole document is needed: JSON, topdown, the
	// decision log. It must not change while a decision is made. Names
	// that are not canonical tokens (only a hand-built http.Header has
	// them) make Prepare build the document at once.
	HTTPHeader http.Header `json:"-"`
	Auth       *Auth       `json:"auth,omitempty"`
}

// MarshalJSON writes the documented form: with HTTPHeader in place of
// Headers, the headers are HeadersOf(HTTPHeader).
func (r Request) MarshalJSON() ([]byte, error) {
	type plain Request // without this method
	p := plain(r.withHeaders())
	return json.Marshal(p)
}

// withHeaders is r with Headers built from HTTPHeader when only that is set.
func (r Request) withHeaders() Request {
	if r.Headers == nil && r.HTTPHeader != nil {
		r.Headers = HeadersOf(r.HTTPHeader)
	}
	r.HTTPHeader = nil
	return r
}

// HeadersOf is the headers document of h: values by lower-case name,
// repeated values joined with "," as Envoy presents them to policy.
// Names that differ only in case (not from net/http, which canonicalizes
// them) are one header, as Prepare folds Headers' names.
func HeadersOf(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, values := range h {
		lower := strings.ToLower(name)
		if _, twice := out[lower]; twice { // only from a hand-built header: fold as Prepare does
			joined := make(map[string]string, len(h))
			for name, values := range h {
				joined[name] = strings.Join(values, ",")
			}
			return lowerKeys(joined)
		}
		out[lower] = strings.Join(values, ",")
	}
	return out
}

// headerValue is header name (lower case) of r as the headers document
// holds it, read from HTTPHeader under canon, its canonical form, when
// Headers is nil: Prepare made sure HTTPHeader's names are canonical
// tokens, which fold to lower case one to one, so the one key is the
// document's.
func (r *Request) headerValue(name, canon string) (string, bool) {
	if r.Headers != nil || r.HTTPHeader == nil {
		v, ok := r.Headers[name]
		return v, ok
	}
	if canon == "" {
		return "", false // name is not a lower-case token: no header has it
	}
	values, ok := r.HTTPHeader[canon]
	if !ok {
		return "", false
	}
	if len(values) == 1 {
		return values[0], true
	}
	return strings.Join(values, ","), true
}

// headerKey is the canonical form under which HTTPHeader holds the
// header a rule names name, or "" when name is not a lower-case token,
// which no header document has: the name whose canonical form is a
// canonical token (canonicalToken, which Prepare checks HTTPHeader's names
// with) and lower-cases back to it.
func headerKey(name string) string {
	canon := http.CanonicalHeaderKey(name)
	if !canonicalToken(canon) || strings.ToLower(canon) != name {
		return ""
	}
	return canon
}

// canonicalToken reports whether name is a header name as net/http keeps
// it: a token, with its first letter and each letter after a hyphen upper
// case and the others lower case (textproto.CanonicalMIMEHeaderKey's form).
func canonicalToken(name string) bool {
	if name == "" {
		return false
	}
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
		switch {
		case 'a' <= c && c <= 'z':
			if upper {
				return false
			}
		case 'A' <= c && c <= 'Z':
			if !upper {
				return false
			}
		}
		upper = c == '-'
	}
	return true
}

// Auth is the validated request credential (JWT).
type Auth struct {
	// Principal is "<iss>/<sub>".
	Principal string   `json:"principal,omitempty"`
	Audiences []string `json:"audiences,omitempty"`
	Presenter string   `json:"presenter,omitempty"`
	// Claims is the token's payload. Prepare turns a string "scope" or
	// "permission" into the list of its space-separated words.
	Claims map[string]any `json:"claims,omitempty"`
}

// DecodeInput parses a JSON input document strictly: unknown fields and
// wrong types are errors that name the JSON path, and the result is
// validated and prepared as Decide would.
func DecodeInput(data []byte) (Input, error) {
	var in Input
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&in); err != nil {
		return Input{}, fmt.Errorf("%w: %s", ErrInvalidInput, describeJSONError(err))
	}
	if dec.More() {
		return Input{}, fmt.Errorf("%w: trailing data after the input document", ErrInvalidInput)
	}
	if err := in.Prepare(); err != nil {
		return Input{}, err
	}
	return in, nil
}

func describeJSONError(err error) string {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		return fmt.Sprintf("input.%s: expected %s, got JSON %s", e.Field, e.Type, e.Value)
	case *json.SyntaxError:
		return fmt.Sprintf("JSON syntax error at byte %d: %s", e.Offset, e.Error())
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "JSON syntax error: the document ends early"
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown field " + msg + " (see docs/policy-input.md)"
	}
	return err.Error()
}

// Prepare validates the input and derives the fields the engine computes:
// request.url_path from request.path, lower-case header names, and the
// scope and permission claims as lists (DefaultSpaceDelimitedClaims). It
// is idempotent; Decide calls it.
func (in *Input) Prepare() error {
	switch in.Layer {
	case L4:
		if in.Request != nil {
			return fmt.Errorf("%w: input.request: must be absent at layer l4", ErrInvalidInput)
		}
	case L7:
		if in.Request == nil {
			return fmt.Errorf("%w: input.request: required at layer l7", ErrInvalidInput)
		}
	case "":
		return fmt.Errorf("%w: input.layer: required, \"l4\" or \"l7\"", ErrInvalidInput)
	default:
		return fmt.Errorf("%w: input.layer: %q is not \"l4\" or \"l7\"", ErrInvalidInput, in.Layer)
	}
	if err := checkIP("input.source.ip", in.Source.IP, &in.valid.source); err != nil {
		return err
	}
	if err := checkIP("input.destination.ip", in.Destination.IP, &in.valid.destination); err != nil {
		return err
	}
	if err := checkPort("input.source.port", in.Source.Port); err != nil {
		return err
	}
	if err := checkPort("input.destination.port", in.Destination.Port); err != nil {
		return err
	}
	if in.Source.RemoteIP != in.Source.IP {
		if err := checkIP("input.source.remote_ip", in.Source.RemoteIP, &in.valid.remote); err != nil {
			return err
		}
	}
	if err := in.Source.prepare(); err != nil {
		return err
	}
	if in.Request != nil {
		in.Request.prepare()
	}
	return nil
}

// prepare derives the identity fields from the principal.
func (s *Source) prepare() error {
	if s.RemoteIP == "" {
		s.RemoteIP = s.IP
	}
	if s.Principal == "" {
		return s.checkAnonymous()
	}
	id, err := parsePrincipal(s.Principal)
	if err != nil {
		return err
	}
	if err := derive("trust_domain", &s.TrustDomain, id.trustDomain, s.Principal); err != nil {
		return err
	}
	if err := derive("namespace", &s.Namespace, id.namespace, s.Principal); err != nil {
		return err
	}
	return derive("service_account", &s.ServiceAccount, id.serviceAccount, s.Principal)
}

// identity is what a principal tells.
type identity struct{ trustDomain, namespace, serviceAccount string }

// principals memoises parsed principals: a node sees few, on every
// connection and request. Direct-mapped by a hash of the principal, so a
// lookup is one hash, one load and one compare (the same string, when the
// caller hands the same one again); a collision only parses again.
var principals struct {
	seed  maphash.Seed
	slots [4096]atomic.Pointer[principalEntry]
}

type principalEntry struct {
	principal string
	id        identity
}

func init() { principals.seed = maphash.MakeSeed() }

func parsePrincipal(principal string) (identity, error) {
	slot := &principals.slots[maphash.String(principals.seed, principal)%uint64(len(principals.slots))]
	if e := slot.Load(); e != nil && e.principal == principal {
		return e.id, nil
	}
	sid, err := spiffeid.FromString(principal)
	if err != nil {
		return identity{}, fmt.Errorf("%w: input.source.principal: %q is not a SPIFFE ID: %w", ErrInvalidInput, principal, err)
	}
	ns, sa := namespaceAndServiceAccount(sid.Path())
	id := identity{trustDomain: sid.TrustDomain().Name(), namespace: ns, serviceAccount: sa}
	slot.Store(&principalEntry{principal: principal, id: id})
	return id, nil
}

// derive sets *have to want, refusing a different value the caller gave.
func derive(field string, have *string, want, principal string) error {
	if *have != "" && *have != want {
		return fmt.Errorf("%w: input.source.%s: %q disagrees with the principal %s", ErrInvalidInput, field, *have, principal)
	}
	*have = want
	return nil
}

// checkAnonymous refuses identity fields without the identity.
func (s *Source) checkAnonymous() error {
	for _, f := range [...]struct{ name, value string }{
		{"trust_domain", s.TrustDomain}, {"namespace", s.Namespace}, {"service_account", s.ServiceAccount},
	} {
		if f.value != "" {
			return fmt.Errorf("%w: input.source.%s: set without input.source.principal; only an authenticated SPIFFE ID tells it", ErrInvalidInput, f.name)
		}
	}
	return nil
}

// namespaceAndServiceAccount reads a Kubernetes-style SPIFFE path
// "/ns/<namespace>/sa/<service-account>"; other paths have neither.
func namespaceAndServiceAccount(path string) (string, string) {
	rest, ok := strings.CutPrefix(path, "/ns/")
	ns, sa, found := strings.Cut(rest, "/sa/")
	if !ok || !found || ns == "" || sa == "" || strings.Contains(ns, "/") || strings.Contains(sa, "/") {
		return "", ""
	}
	return ns, sa
}

func (r *Request) prepare() {
	r.URLPath = NormalizePath(r.Path)
	r.Headers = lowerKeys(r.Headers)
	if r.Headers == nil && r.HTTPHeader != nil {
		for name := range r.HTTPHeader {
			if !canonicalToken(name) {
				r.Headers = HeadersOf(r.HTTPHeader)
				break
			}
		}
	}
	if r.Auth != nil {
		r.Auth = r.Auth.WithSpaceDelimitedClaims(DefaultSpaceDelimitedClaims...)
	}
}

// DefaultSpaceDelimitedClaims are the JWT claims Istio always has its JWT
// filter read as space-delimited lists (OAuth's "scope" and "permission"),
// whatever the RequestAuthentication says: a token whose scope is
// "write read" matches request.auth.claims[scope] "write". Prepare splits
// them.
var DefaultSpaceDelimitedClaims = []string{"permission", "scope"}

// WithSpaceDelimitedClaims returns a with each named top-level claim whose
// value is a string of space-separated words replaced by the list of those
// words (split at " " only), as Envoy's JWT filter normalizes the payload
// Istio's policies match. Prepare applies DefaultSpaceDelimitedClaims; a caller that
// validated the token against a RequestAuthentication rule also passes
// that rule's spaceDelimitedClaims. A string without words ("" or only
// spaces) stays as it is. a itself is never modified: when a claim
// changes, the result is a copy.
func (a *Auth) WithSpaceDelimitedClaims(names ...string) *Auth {
	var claims map[string]any
	for _, name := range names {
		s, ok := a.Claims[name].(string)
		if !ok {
			continue
		}
		words := spaceSeparated(s)
		if len(words) == 0 {
			continue
		}
		if claims == nil {
			claims = maps.Clone(a.Claims)
		}
		claims[name] = words
	}
	if claims == nil {
		return a
	}
	out := *a
	out.Claims = claims
	return &out
}

// spaceSeparated splits s at every " " (only the space, as Envoy does),
// skipping empty words.
func spaceSeparated(s string) []any {
	var words []any
	for _, w := range strings.Split(s, " ") {
		if w != "" {
			words = append(words, w)
		}
	}
	return words
}

// lowerKeys returns h with lower-case keys, copying only when a key is not.
// Names that differ only in case are one header: their values are joined
// with "," (as the waypoint joins a repeated header's), in the order of
// the names as given, so the result never depends on map order.
func lowerKeys(h map[string]string) map[string]string {
	for name := range h {
		if strings.ToLower(name) == name {
			continue
		}
		out := make(map[string]string, len(h))
		for _, k := range slices.Sorted(maps.Keys(h)) {
			lk := strings.ToLower(k)
			if have, ok := out[lk]; ok {
				out[lk] = have + "," + h[k]
				continue
			}
			out[lk] = h[k]
		}
		return out
	}
	return h
}

// checkIP refuses an ip that is not an IP address; valid is the last one
// it accepted for the field, which it does not parse again.
func checkIP(field, ip string, valid *string) error {
	if ip == "" || ip == *valid {
		return nil
	}
	if _, err := netip.ParseAddr(ip); err != nil {
		return fmt.Errorf("%w: %s: %q is not an IP address", ErrInvalidInput, field, ip)
	}
	*valid = ip
	return nil
}

func checkPort(field string, port int) error {
	if port < 0 || port > 65535 {
		return fmt.Errorf("%w: %s: %d is not a port (0-65535)", ErrInvalidInput, field, port)
	}
	return nil
}
