package istio

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Validate reports every reason Istio's admission would refuse p, or
// regomesh could not enforce it as written, as FieldErrors joined into one
// error (errors.Is(err, ErrInvalid)). It follows Istio's
// ValidateAuthorizationPolicy: empty sources, operations and values, bad
// ports, IPs and CIDRs, unknown `when` keys, serviceAccounts mixed with
// principals or namespaces, selector with targetRefs, DENY and CUSTOM
// without rules, malformed path templates. The options do not change what
// is valid: a CUSTOM provider they do not list is translated (its rules
// deny), not refused, as in Istio.
func Validate(p *Policy, _ Options) error {
	ps := &problems{p: p, kind: ErrInvalid}
	validateNames(p.Namespace, p.Name, ps)
	validateScope(p, ps)
	validateAction(p, ps)
	for i, r := range p.Rules {
		validateRule(r, fmt.Sprintf("spec.rules[%d]", i), ps)
	}
	return ps.err()
}

func validateNames(namespace, name string, ps *problems) {
	// The namespace and name become a package key and file names: only
	// Kubernetes names keep those unique ("<namespace>.<name>": namespaces
	// have no dots) and inside the bundle directory.
	if namespace == "" {
		ps.add("metadata.namespace", "required")
	} else if len(validation.IsDNS1123Label(namespace)) > 0 {
		ps.add("metadata.namespace", "%q is not a Kubernetes namespace name (a DNS-1123 label: lower-case letters, digits and '-')", namespace)
	}
	if name == "" {
		ps.add("metadata.name", "required")
	} else if len(validation.IsDNS1123Subdomain(name)) > 0 {
		ps.add("metadata.name", "%q is not a Kubernetes object name (a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')", name)
	}
}

func validateScope(p *Policy, ps *problems) {
	if p.Selector != nil && len(p.TargetRefs) > 0 {
		ps.add("spec", "only one of targetRefs or selector can be set")
	}
	validateSelector(p.Selector, ps)
	for i, ref := range p.TargetRefs {
		validateTargetRef(ref, fmt.Sprintf("spec.targetRefs[%d]", i), ps)
	}
}

// validateSelector applies Istio's validateWorkloadSelector.
func validateSelector(selector map[string]string, ps *problems) {
	for _, k := range slices.Sorted(maps.Keys(selector)) {
		v := selector[k]
		switch {
		case k == "":
			ps.add("spec.selector.matchLabels", "empty key is not supported in selector: %q", k+"="+v)
		case strings.Contains(k, "*") || strings.Contains(v, "*"):
			ps.add("spec.selector.matchLabels."+k, "wildcard is not supported in selector: %q", k+"="+v)
		}
	}
}

func validateTargetRef(ref TargetRef, path string, ps *problems) {
	if ref.Name == "" {
		ps.add(path+".name", "required")
	}
	if ref.Namespace != "" {
		ps.add(path+".namespace", "must not be set; cross namespace referencing is not supported")
	}
	switch targetKind(ref) {
	case kindService, kindGateway, kindGatewayClass:
	case kindServiceEntry:
		ps.add(path, "targetRef to a ServiceEntry is not supported: the translator does not know its hosts; target the waypoint's Gateway instead")
	default:
		ps.add(path, "targetRef must be to a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io), found %q/%q", ref.Group, ref.Kind)
	}
}

type refKind int

const (
	kindUnknown refKind = iota
	kindService
	kindServiceEntry
	kindGateway
	kindGatewayClass
)

func targetKind(ref TargetRef) refKind {
	switch {
	case ref.Kind == "Service" && (ref.Group == "" || ref.Group == "core"):
		return kindService
	case ref.Kind == "ServiceEntry" && ref.Group == "networking.istio.io":
		return kindServiceEntry
	case ref.Kind == "Gateway" && ref.Group == "gateway.networking.k8s.io":
		return kindGateway
	case ref.Kind == "GatewayClass" && ref.Group == "gateway.networking.k8s.io":
		return kindGatewayClass
	}
	return kindUnknown
}

// neverTriggered is Istio's message for DENY and CUSTOM policies without rules.
const neverTriggered = "%s action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request"

func validateAction(p *Policy, ps *problems) {
	switch p.Action {
	case Allow, Audit:
	case Deny:
		if len(p.Rules) == 0 {
			ps.add("spec.rules", neverTriggered, Deny)
		}
	case Custom:
		validateCustom(p, ps)
	default:
		ps.add("spec.action", "%q is not ALLOW, DENY, AUDIT or CUSTOM", p.Action)
	}
	if p.Provider != "" && p.Action != Custom {
		ps.add("spec.provider", "must not be set with action %s: only CUSTOM policies have a provider", p.Action)
	}
}

// validateCustom applies Istio's CUSTOM restrictions (identities are the
// provider's business). A provider the bundle set does not supply is not
// an error: as in Istio, its rules deny what they match (translate.go).
func validateCustom(p *Policy, ps *problems) {
	if len(p.Rules) == 0 {
		ps.add("spec.rules", neverTriggered, Custom)
	}
	if p.Provider == "" {
		ps.add("spec.provider.name", "required for action CUSTOM")
	}
	for i, r := range p.Rules {
		for j, s := range r.From {
			for _, f := range s.fields() {
				if len(f.values) > 0 && identityField(f.name) {
					ps.add(fmt.Sprintf("spec.rules[%d].from[%d].source.%s", i, j, f.name), "%s is currently not supported with CUSTOM action", f.name)
				}
			}
		}
		for j, c := range r.When {
			if identityKey(c.Key) {
				ps.add(fmt.Sprintf("spec.rules[%d].when[%d].key", i, j), "%s is currently not supported with CUSTOM action", c.Key)
			}
		}
	}
}

func identityField(name string) bool {
	switch baseField(name) {
	case "namespaces", "serviceAccounts", "trustDomains", "principals", "requestPrincipals":
		return true
	}
	return false
}

func identityKey(key string) bool {
	switch key {
	case "source.namespace", "source.serviceAccount", "source.principal", "source.trustDomain":
		return true
	}
	return strings.HasPrefix(key, "request.auth.")
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func validateRule(r Rule, path string, ps *problems) {
	for j, s := range r.From {
		validateSource(s, fmt.Sprintf("%s.from[%d].source", path, j), ps)
	}
	for j, o := range r.To {
		validateOperation(o, fmt.Sprintf("%s.to[%d].operation", path, j), ps)
	}
	for j, c := range r.When {
		validateCondition(c, fmt.Sprintf("%s.when[%d]", path, j), ps)
	}
}

func validateSource(s Source, path string, ps *problems) {
	fields := s.fields()
	if !slices.ContainsFunc(fields[:], func(f fieldValues) bool { return len(f.values) > 0 }) {
		ps.add(path, "must not be empty: set at least one of principals, namespaces, serviceAccounts, trustDomains, ipBlocks, remoteIpBlocks, requestPrincipals or their not-forms")
		return
	}
	identities := len(s.Principals) + len(s.NotPrincipals) + len(s.Namespaces) + len(s.NotNamespaces)
	if identities > 0 && len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 {
		ps.add(path, "cannot set serviceAccounts with namespaces or principals")
	}
	for _, f := range fields {
		if len(f.values) == 0 {
			continue
		}
		at := path + "." + f.name
		switch baseField(f.name) {
		case "ipBlocks", "remoteIpBlocks":
			checkValues(f.values, at, checkIP, ps)
		case "serviceAccounts":
			checkServiceAccounts(f.values, at, ps)
		default:
			checkValues(f.values, at, nil, ps)
		}
	}
}

func validateOperation(o Operation, path string, ps *problems) {
	fields := o.fields()
	if !slices.ContainsFunc(fields[:], func(f fieldValues) bool { return len(f.values) > 0 }) {
		ps.add(path, "must not be empty: set at least one of hosts, ports, methods, paths or their not-forms")
		return
	}
	for _, f := range fields {
		if len(f.values) == 0 {
			continue
		}
		at := path + "." + f.name
		switch baseField(f.name) {
		case "ports":
			checkValues(f.values, at, checkPort, ps)
		case "paths":
			checkValues(f.values, at, checkPathTemplate, ps)
		default:
			checkValues(f.values, at, nil, ps)
		}
	}
}

func validateCondition(c Condition, path string, ps *problems) {
	if c.Key == "" {
		ps.add(path+".key", "required")
		return
	}
	k, err := parseKey(c.Key)
	if err != nil {
		ps.add(path+".key", "%v", err)
		return
	}
	if len(c.Values) == 0 && len(c.NotValues) == 0 {
		ps.add(path, "at least one of values or notValues must be set for key %s", c.Key)
		return
	}
	for _, vs := range []struct {
		name   string
		values []string
	}{{"values", c.Values}, {"notValues", c.NotValues}} {
		at := path + "." + vs.name
		switch k.attr {
		case attrSourceIP, attrRemoteIP, attrDestinationIP:
			checkValues(vs.values, at, checkIP, ps)
		case attrDestinationPort:
			checkValues(vs.values, at, checkPort, ps)
		case attrSourceServiceAccount:
			checkServiceAccounts(vs.values, at, ps)
		default:
			checkValues(vs.values, at, nil, ps)
		}
	}
}

// checkValues reports empty values and, with check, malformed ones.
func checkValues(values []string, path string, check func(string) error, ps *problems) {
	for i, v := range values {
		if v == "" {
			ps.add(fmt.Sprintf("%s[%d]", path, i), "empty string")
			continue
		}
		if check == nil {
			continue
		}
		if err := check(v); err != nil {
			ps.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

func checkIP(v string) error {
	if strings.Contains(v, "/") {
		if _, err := netip.ParsePrefix(v); err != nil {
			return fmt.Errorf("%q is not a CIDR range", v)
		}
		return nil
	}
	if _, err := netip.ParseAddr(v); err != nil {
		return fmt.Errorf("%q is not an IP address", v)
	}
	return nil
}

func checkPort(v string) error {
	if p, err := strconv.ParseUint(v, 10, 32); err != nil || p > 65535 {
		return fmt.Errorf("%q is not a port (an integer from 0 to 65535)", v)
	}
	return nil
}

// checkServiceAccounts applies Istio's CheckServiceAccount.
func checkServiceAccounts(values []string, path string, ps *problems) {
	if len(values) > 16 {
		ps.add(path, "may not have more than 16 values")
	}
	checkValues(values, path, func(v string) error {
		ns, sa, qualified := strings.Cut(v, "/")
		switch {
		case strings.Contains(v, "*"):
			return fmt.Errorf("%q: wildcard not allowed", v)
		case len(v) > 320:
			return fmt.Errorf("%q: value cannot exceed 320 characters", v)
		case strings.Count(v, "/") > 1, qualified && (ns == "" || sa == ""):
			return fmt.Errorf("%q: expected format 'serviceAccount' or 'namespace/serviceAccount'", v)
		}
		return nil
	}, ps)
}

// validLiteral is Istio's (and Envoy's) pchar set for the literal
// segments of a path template (RFC 3986 appendix A).
var validLiteral = regexp.MustCompile(`^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$`)

// checkPathTemplate applies Istio's CheckValidPathTemplate: braces only in
// whole-segment {*} and {**} operators, no operator after {**}, and
// literal segments of valid characters.
func checkPathTemplate(path string) error {
	template := isPathTemplate(path)
	matchAny := false
	for _, glob := range strings.Split(strings.Trim(path, "/"), "/") {
		switch {
		case (glob == matchOneTemplate || glob == matchAnyTemplate) && matchAny:
			return fmt.Errorf("invalid path template %q: {**} must be the last operator", path)
		case glob == matchOneTemplate:
			continue
		case glob == matchAnyTemplate:
			matchAny = true
			continue
		case strings.ContainsAny(glob, "{}"):
			return fmt.Errorf("invalid path %q: '{' or '}' outside a {*} or {**} segment", path)
		case template && !validLiteral.MatchString(glob):
			return fmt.Errorf("invalid path template %q: segment %q has characters outside RFC 3986 pchar", path, glob)
		}
	}
	return nil
}
