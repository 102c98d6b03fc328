package istio

import (
	"fmt"
	"strings"
)

// attr is an attribute a `when` condition can test (docs/policy-input.md,
// and Istio's "Authorization Policy Conditions" reference).
type attr int

const (
	attrSourceIP attr = iota + 1
	attrRemoteIP
	attrSourceNamespace
	attrSourcePrincipal
	attrSourceServiceAccount
	attrSourceTrustDomain
	attrDestinationIP
	attrDestinationPort
	attrConnectionSNI
	attrRequestHeader
	attrRequestPrincipal
	attrRequestAudiences
	attrRequestPresenter
	attrRequestClaim
)

// plainKeys are the keys without a [name] part.
var plainKeys = map[string]attr{
	"source.ip":              attrSourceIP,
	"remote.ip":              attrRemoteIP,
	"source.namespace":       attrSourceNamespace,
	"source.principal":       attrSourcePrincipal,
	"source.serviceAccount":  attrSourceServiceAccount,
	"source.trustDomain":     attrSourceTrustDomain,
	"destination.ip":         attrDestinationIP,
	"destination.port":       attrDestinationPort,
	"connection.sni":         attrConnectionSNI,
	"request.auth.principal": attrRequestPrincipal,
	"request.auth.audiences": attrRequestAudiences,
	"request.auth.presenter": attrRequestPresenter,
}

// l4Attrs are the attributes ztunnel enforces (Istio's l4WhenAttributes).
var l4Attrs = map[attr]bool{
	attrSourceIP: true, attrSourceNamespace: true, attrSourcePrincipal: true,
	attrDestinationIP: true, attrDestinationPort: true,
}

// condKey is a parsed `when` key.
type condKey struct {
	attr   attr
	header string   // request.headers[Name]: the name, lower-cased
	claim  []string // request.auth.claims[a][b]: the path
}

const (
	headerKeyPrefix = "request.headers"
	claimKeyPrefix  = "request.auth.claims"
)

// parseKey reads a `when` key, refusing what Istio refuses and the keys
// regomesh does not enforce.
func parseKey(key string) (condKey, error) {
	if a, ok := plainKeys[key]; ok {
		return condKey{attr: a}, nil
	}
	if rest, ok := strings.CutPrefix(key, headerKeyPrefix); ok {
		names, err := bracketed(rest)
		if err != nil || len(names) != 1 {
			return condKey{}, fmt.Errorf("bad key %q: expected request.headers[<name>]", key)
		}
		return condKey{attr: attrRequestHeader, header: strings.ToLower(names[0])}, nil
	}
	if rest, ok := strings.CutPrefix(key, claimKeyPrefix); ok {
		names, err := bracketed(rest)
		if err != nil {
			return condKey{}, fmt.Errorf("bad key %q: expected request.auth.claims[<name>] or request.auth.claims[<name>][<nested name>]", key)
		}
		return condKey{attr: attrRequestClaim, claim: names}, nil
	}
	switch {
	case key == "destination.namespace":
		return condKey{}, fmt.Errorf("attribute %s is replaced by the metadata.namespace", key)
	case strings.HasPrefix(key, "destination.labels"):
		return condKey{}, fmt.Errorf("attribute %s is replaced by the workload selector", key)
	case key == "destination.name" || key == "destination.user":
		return condKey{}, fmt.Errorf("deprecated attribute %s: only supported in v1alpha1", key)
	}
	return condKey{}, fmt.Errorf("unknown attribute %q: expected one of %s", key, knownKeys)
}

const knownKeys = "source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, " +
	"destination.ip, destination.port, connection.sni, request.headers[<name>], request.auth.principal, " +
	"request.auth.audiences, request.auth.presenter, request.auth.claims[<name>]"

// bracketed splits "[a][b]" into ["a", "b"]; names are non-empty and hold
// no brackets.
func bracketed(s string) ([]string, error) {
	var names []string
	for s != "" {
		rest, ok := strings.CutPrefix(s, "[")
		end := strings.IndexByte(rest, ']')
		if !ok || end <= 0 || strings.ContainsRune(rest[:end], '[') {
			return nil, fmt.Errorf("malformed %q", s)
		}
		names = append(names, rest[:end])
		s = rest[end+1:]
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no [name]")
	}
	return names, nil
}

// l4Field says whether ztunnel enforces a source or operation field.
func l4Field(name string) bool {
	switch baseField(name) {
	case "principals", "namespaces", "serviceAccounts", "ipBlocks", "ports":
		return true
	}
	return false
}
