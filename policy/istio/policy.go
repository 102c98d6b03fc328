package istio

import "strings"

// Action is what a policy does when one of its rules matches.
type Action string

// The actions of an AuthorizationPolicy, evaluated in the order CUSTOM,
// DENY, ALLOW; AUDIT only marks decisions.
const (
	Allow  Action = "ALLOW"
	Deny   Action = "DENY"
	Audit  Action = "AUDIT"
	Custom Action = "CUSTOM"
)

// Policy is one AuthorizationPolicy in the translator's terms: the fields
// of security.istio.io AuthorizationPolicy the translation reads, with no
// generated types. Decode and Convert build it; Validate checks it as
// Istio's admission would. Nil and empty slices mean the same (as in the
// protobuf form) except for Selector, where non-nil means "present".
type Policy struct {
	Namespace string
	Name      string
	Action    Action
	// Provider names the CUSTOM provider: the Rego package
	// data.mesh.providers["<provider>"] whose boolean `allow` decides.
	Provider string
	// DryRun is the istio.io/dry-run annotation: evaluated and logged,
	// never enforced.
	DryRun bool
	// Selector is spec.selector.matchLabels; nil when spec.selector is absent.
	Selector map[string]string
	// TargetRefs are spec.targetRefs, and the deprecated spec.targetRef.
	TargetRefs []TargetRef
	// Rules: a policy matches when any rule does. No rules never match
	// (an ALLOW without rules allows nothing).
	Rules []Rule

	// Origin is where the policy was read from ("policies.yaml:12"), for
	// messages; empty when it was built in code.
	Origin string
	// file and lines locate fields for messages: lines finds the line of
	// a field path ("spec.rules[0].from[1]") in file.
	file  string
	lines *lineIndex
}

// ID is the policy's name in decisions: "<namespace>/<name>".
func (p *Policy) ID() string { return p.Namespace + "/" + p.Name }

// TargetRef is a Gateway API policy attachment (spec.targetRefs[]).
type TargetRef struct {
	Group     string
	Kind      string
	Name      string
	Namespace string // must be empty: Istio refuses cross-namespace refs
}

// Rule matches when any From matches, any To matches and every When
// matches; an empty From, To or When matches anything.
type Rule struct {
	From []Source
	To   []Operation
	When []Condition
}

// Source is rules[].from[].source: values in one field OR, fields AND, and
// each NotX excludes what it lists.
type Source struct {
	Principals           []string
	NotPrincipals        []string
	RequestPrincipals    []string
	NotRequestPrincipals []string
	Namespaces           []string
	NotNamespaces        []string
	ServiceAccounts      []string
	NotServiceAccounts   []string
	TrustDomains         []string
	NotTrustDomains      []string
	IPBlocks             []string
	NotIPBlocks          []string
	RemoteIPBlocks       []string
	NotRemoteIPBlocks    []string
}

// Operation is rules[].to[].operation.
type Operation struct {
	Hosts      []string
	NotHosts   []string
	Ports      []string
	NotPorts   []string
	Methods    []string
	NotMethods []string
	Paths      []string
	NotPaths   []string
}

// Condition is rules[].when[]: Key must match one of Values (if any) and
// none of NotValues.
type Condition struct {
	Key       string
	Values    []string
	NotValues []string
}

// fieldValues is one field of a source or operation: its YAML name, its
// values, and whether it is the not-form.
type fieldValues struct {
	name   string // "principals", "notPrincipals", ...
	values []string
	not    bool
}

// fields lists the source's fields in the order translations test them:
// identities first (the selective, indexable ones), then addresses, then
// request credentials.
func (s *Source) fields() [14]fieldValues {
	return [...]fieldValues{
		{"principals", s.Principals, false},
		{"notPrincipals", s.NotPrincipals, true},
		{"namespaces", s.Namespaces, false},
		{"notNamespaces", s.NotNamespaces, true},
		{"serviceAccounts", s.ServiceAccounts, false},
		{"notServiceAccounts", s.NotServiceAccounts, true},
		{"trustDomains", s.TrustDomains, false},
		{"notTrustDomains", s.NotTrustDomains, true},
		{"ipBlocks", s.IPBlocks, false},
		{"notIpBlocks", s.NotIPBlocks, true},
		{"remoteIpBlocks", s.RemoteIPBlocks, false},
		{"notRemoteIpBlocks", s.NotRemoteIPBlocks, true},
		{"requestPrincipals", s.RequestPrincipals, false},
		{"notRequestPrincipals", s.NotRequestPrincipals, true},
	}
}

// fields lists the operation's fields: ports (the L4 part) first.
func (o *Operation) fields() [8]fieldValues {
	return [...]fieldValues{
		{"ports", o.Ports, false},
		{"notPorts", o.NotPorts, true},
		{"hosts", o.Hosts, false},
		{"notHosts", o.NotHosts, true},
		{"methods", o.Methods, false},
		{"notMethods", o.NotMethods, true},
		{"paths", o.Paths, false},
		{"notPaths", o.NotPaths, true},
	}
}

// baseField is the field a not-form negates: "notIpBlocks" -> "ipBlocks".
func baseField(name string) string {
	if rest, ok := strings.CutPrefix(name, "not"); ok && rest != "" {
		return strings.ToLower(rest[:1]) + rest[1:]
	}
	return name
}
