package istio

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Root is the bundle root translated policies live under: each policy is
// the package mesh.policies.istio["<namespace>.<name>"].
const Root = "mesh/policies/istio"

// Translation is the Rego form of a set of policies.
type Translation struct {
	// Modules maps bundle file names ("mesh/policies/istio/<namespace>/<name>.rego")
	// to Rego source, one module per policy.
	Modules map[string]string
	// Warnings say where a policy is enforced otherwise than written,
	// at L4 mostly, in Istio's words.
	Warnings []Warning
}

// Warning is one translation caveat.
type Warning struct {
	Policy  string // "<namespace>/<name>"
	Rule    int    // index in spec.rules, or -1 for the whole policy
	Message string
}

func (w Warning) String() string {
	if w.Rule < 0 {
		return w.Policy + ": " + w.Message
	}
	return fmt.Sprintf("%s: spec.rules[%d]: %s", w.Policy, w.Rule, w.Message)
}

// Translate validates every policy and translates each into one Rego
// module contributing to the mesh.authz library's sets. Invalid policies
// (or two with one namespace and name) fail the whole set: the error
// joins every problem found.
func Translate(policies []*Policy, opts Options) (*Translation, error) {
	return TranslateAll(&Resources{AuthorizationPolicies: policies}, opts)
}

// TranslateAll validates and translates AuthorizationPolicies, as
// Translate does, and PeerAuthentications: one module each, where a STRICT
// mode denies plaintext wherever that policy decides the mode (the most
// specific one does, as in Istio; see peerTree). RequestAuthentications are
// validated, and each named in a warning: waypoints enforce them, not the
// bundle. Invalid resources fail the whole set.
func TranslateAll(res *Resources, opts Options) (*Translation, error) {
	opts = opts.withDefaults()
	var errs []error
	seen := map[string]string{}
	invalid := make([]error, len(res.AuthorizationPolicies))
	forEach(len(invalid), func(i int) { invalid[i] = Validate(res.AuthorizationPolicies[i], opts) })
	for i, p := range res.AuthorizationPolicies {
		if err := invalid[i]; err != nil {
			errs = append(errs, err)
			continue
		}
		if first, dup := seen[p.ID()]; dup {
			errs = append(errs, &FieldError{Pos: p.Origin, Policy: p.ID(), Problem: "defined twice (first at " + first + ")", kind: ErrInvalid})
		}
		seen[p.ID()] = p.Origin
	}
	seenPeer := map[string]string{}
	for _, pa := range res.PeerAuthentications {
		if err := ValidatePeerAuthentication(pa); err != nil {
			errs = append(errs, err)
			continue
		}
		if first, dup := seenPeer[pa.ID()]; dup {
			errs = append(errs, &FieldError{Pos: pa.Origin, Policy: pa.ID(), Problem: "PeerAuthentication defined twice (first at " + first + ")", kind: ErrInvalid})
		}
		seenPeer[pa.ID()] = pa.Origin
	}
	seenRequest := map[string]string{}
	for _, ra := range res.RequestAuthentications {
		if err := ValidateRequestAuthentication(ra); err != nil {
			errs = append(errs, err)
			continue
		}
		if first, dup := seenRequest[ra.ID()]; dup {
			errs = append(errs, &FieldError{Pos: ra.Origin, Policy: ra.ID(), Problem: "RequestAuthentication defined twice (first at " + first + ")", kind: ErrInvalid})
		}
		seenRequest[ra.ID()] = ra.Origin
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	out := &Translation{Modules: make(map[string]string, len(res.AuthorizationPolicies)+len(res.PeerAuthentications))}
	type translated struct {
		src      string
		warnings []Warning
	}
	modules := make([]translated, len(res.AuthorizationPolicies))
	forEach(len(modules), func(i int) {
		modules[i].src, modules[i].warnings = translatePolicy(res.AuthorizationPolicies[i], opts)
	})
	for i, p := range res.AuthorizationPolicies {
		out.Modules[ModuleFile(p)] = modules[i].src
		out.Warnings = append(out.Warnings, modules[i].warnings...)
	}
	if len(res.PeerAuthentications) > 0 {
		tree := newPeerTree(res.PeerAuthentications, opts)
		for _, pa := range res.PeerAuthentications {
			out.Modules[PeerModuleFile(pa)] = tree.translate(pa)
		}
		out.Warnings = append(out.Warnings, tree.warnings...)
	}
	for _, ra := range res.RequestAuthentications {
		out.Warnings = append(out.Warnings, Warning{Policy: ra.ID(), Rule: -1, Message: "a RequestAuthentication is not part of the bundle: " +
			"waypoints validate its JWTs (waypoint --request-authentication) and policy sees the result as input.request.auth; " +
			"see docs/request-authentication.md"})
	}
	return out, nil
}

// ModuleFile is the bundle file of p's module.
func ModuleFile(p *Policy) string { return Root + "/" + p.Namespace + "/" + p.Name + ".rego" }

// Package is p's Rego package: a string key, since policy names may hold
// dots; namespaces cannot, so "<namespace>.<name>" is unique.
func Package(p *Policy) string {
	return "mesh.policies.istio[" + quote(p.Namespace+"."+p.Name) + "]"
}

// points are the library's contribution sets, per action.
var points = map[Action]string{Allow: "allow", Deny: "deny", Audit: "audit", Custom: "custom_deny"}

// Istio's status messages for what ztunnel cannot enforce
// (pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go).
const (
	httpRuleFmt = "ztunnel does not support HTTP attributes (found: %s). " +
		"In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s"
	httpDenyRuleBoilerplate = "DENY policy with HTTP attributes is enforced without the HTTP rules. " +
		"This will be more restrictive than requested."
	httpAllowRuleBoilerplate = "Within an ALLOW policy, rules matching HTTP attributes are omitted. " +
		"This will be more restrictive than requested."
	unsupportedActionFmt = "ztunnel does not support the %s action"
)

// policyTranslator writes one policy's module.
type policyTranslator struct {
	p        *Policy
	opts     Options
	m        *module
	scope    scope
	warnings []Warning
	notes    []string // header lines about layers
}

func translatePolicy(p *Policy, opts Options) (string, []Warning) {
	t := &policyTranslator{p: p, opts: opts, m: newModule()}
	t.scope = t.resolveScope()
	body := newModule()
	t.m = body
	if t.scope.attached {
		t.appliesRule()
		if p.Action == Allow {
			t.allowScope()
		}
		t.layerSupport()
		t.undefinedProvider()
		for i, r := range p.Rules {
			t.rule(i, r)
		}
	}
	head := newModule()
	t.header(head)
	if body.b.Len() == 0 {
		return head.String(), t.warnings
	}
	return head.String() + "\n" + body.String(), t.warnings
}

func (t *policyTranslator) warn(rule int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	t.warnings = append(t.warnings, Warning{Policy: t.p.ID(), Rule: rule, Message: msg})
	if rule >= 0 {
		msg = fmt.Sprintf("rules[%d]: %s", rule, msg)
	}
	t.notes = append(t.notes, msg)
}

func (t *policyTranslator) header(m *module) {
	m.comment("Code generated by regomesh from AuthorizationPolicy %s. DO NOT EDIT.", t.p.ID())
	if t.p.Origin != "" {
		m.comment("Source: %s", t.p.Origin)
	}
	m.comment("")
	action := string(t.p.Action)
	switch {
	case t.badCustom():
		action += fmt.Sprintf(" (provider %q, not defined: its rules deny)", t.p.Provider)
	case t.p.Action == Custom:
		action += fmt.Sprintf(" (provider %q)", t.p.Provider)
	}
	if t.p.DryRun {
		action += ", dry run (istio.io/dry-run: evaluated and logged, not enforced)"
	}
	m.comment("%s: %s.", action, t.scope.description)
	for _, n := range t.notes {
		m.comment("%s", n)
	}
	m.line("package %s", Package(t.p))
}

// appliesRule writes `applies`, which every contribution requires.
func (t *policyTranslator) appliesRule() {
	t.m.comment("applies holds when the policy selects the destination.")
	switch {
	case t.scope.always:
		t.m.rule("applies := true", nil)
	default:
		for _, c := range t.scope.when {
			t.m.rule("applies", c)
		}
	}
}

func (t *policyTranslator) allowScope() {
	t.m.comment("An ALLOW policy that selects the destination denies what none of its rules allows.")
	t.m.rule(fmt.Sprintf("allow_scope contains {%q: %s%s}", "policy", quote(t.p.ID()), t.dryRun()), conj{"applies"})
}

// layerSupport notes, in Istio's words, what ztunnel does not enforce.
func (t *policyTranslator) layerSupport() {
	switch {
	case t.scope.waypointOnly:
	case t.p.Action == Audit || t.p.Action == Custom:
		t.warn(-1, unsupportedActionFmt, t.p.Action)
	case t.p.Action == Allow && len(t.p.Rules) > 0 && !slices.ContainsFunc(t.p.Rules, func(r Rule) bool { return len(httpAttributes(r)) == 0 }):
		t.warn(-1, "at L4 (ztunnel) every rule is dropped, so the policy denies every connection to the workloads it selects")
	}
}

// badCustom says whether p is a CUSTOM policy whose provider the bundle set
// does not supply. Istio's waypoint turns such a policy's rules into DENY
// rules (builder.go, getBadCustomDenyRules): it fails closed for exactly
// the requests they match.
func (t *policyTranslator) badCustom() bool {
	return t.p.Action == Custom && !t.opts.knowsProvider(t.p.Provider)
}

func (t *policyTranslator) undefinedProvider() {
	if t.badCustom() {
		t.warn(-1, "CUSTOM provider %q is not defined (known: %s): its rules deny every request they match, as Istio does; "+
			"supply the Rego package data.mesh.providers[%q] and list it in the translator's providers",
			t.p.Provider, listOrNone(t.opts.Providers), t.p.Provider)
	}
}

func (t *policyTranslator) dryRun() string {
	if t.p.DryRun {
		return `, "dry_run": true`
	}
	return ""
}

// entry is the contributed set element for rule i.
func (t *policyTranslator) entry(i int) string {
	e := fmt.Sprintf(`{"policy": %s, "rule": %d%s`, quote(t.p.ID()), i, t.dryRun())
	switch {
	case t.badCustom():
		e += `, "reason": ` + quote(fmt.Sprintf("denied by CUSTOM policy: provider %q is not defined", t.p.Provider))
	case t.p.Action == Custom:
		e += `, "reason": ` + quote(fmt.Sprintf("denied by CUSTOM provider %q", t.p.Provider))
	}
	return e + "}"
}

// rule writes rules[i] at the layers that enforce it.
func (t *policyTranslator) rule(i int, r Rule) {
	point := points[t.p.Action]
	http := httpAttributes(r)
	switch {
	case t.scope.waypointOnly && t.opts.Waypoint != "":
		t.waypointRule(i, r, point, http)
	case t.scope.waypointOnly:
		t.contribution(i, r, point, "", fmt.Sprintf("rules[%d], in waypoints (the policy has targetRefs).", i))
	case t.p.Action == Audit || t.p.Action == Custom:
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], at L7 only (ztunnel does not support %s).", i, t.p.Action))
	case len(http) == 0 && t.layerSensitive(r):
		t.ztunnelIgnores(i, r)
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], at L7, matched as a waypoint matches it.", i))
		t.contribution(i, r, point, "l4", fmt.Sprintf("rules[%d], at L4, matched as ztunnel matches it.", i))
	case len(http) == 0:
		t.contribution(i, r, point, "", fmt.Sprintf("rules[%d], at L4 and L7.", i))
	case t.p.Action == Allow:
		t.warn(i, httpRuleFmt, strings.Join(http, ", "), httpAllowRuleBoilerplate)
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], at L7 only: ztunnel drops ALLOW rules with HTTP attributes.", i))
	default:
		t.warn(i, httpRuleFmt, strings.Join(http, ", "), httpDenyRuleBoilerplate)
		t.ztunnelIgnores(i, r)
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], at L7.", i))
		t.contribution(i, r, point, "l4", fmt.Sprintf("rules[%d], at L4, without its HTTP attributes.", i))
	}
}

// waypointRule writes rules[i] of a policy with targetRefs into a
// waypoint's bundle: in full for requests (l7), and for the connections
// the waypoint relays as TCP (l4) as Envoy's network RBAC filter in an
// Istio waypoint enforces it, with ztunnel's downgrade: an ALLOW rule
// with HTTP attributes never matches there, a DENY or CUSTOM rule loses
// them, an AUDIT rule stays with requests.
func (t *policyTranslator) waypointRule(i int, r Rule, point string, http []string) {
	switch {
	case t.p.Action == Audit:
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], in this waypoint, for requests.", i))
	case len(http) == 0:
		t.contribution(i, r, point, "", fmt.Sprintf("rules[%d], in this waypoint, for requests and relayed TCP.", i))
	case t.p.Action == Allow:
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], in this waypoint, for requests only: it has HTTP attributes.", i))
	default:
		t.contribution(i, r, point, "l7", fmt.Sprintf("rules[%d], in this waypoint, for requests.", i))
		t.contribution(i, r, point, "l4", fmt.Sprintf("rules[%d], in this waypoint, for relayed TCP, without its HTTP attributes.", i))
	}
}

// contribution writes the rule contributing rules[i] at layer ("" for
// both), or notes why it never matches there.
func (t *policyTranslator) contribution(i int, r Rule, point, layer, comment string) {
	b := &ruleBody{t: t, i: i, l4: layer == "l4", waypoint: layer == "l7" || t.scope.waypointOnly}
	if layer != "" {
		b.add(conj{fmt.Sprintf("input.layer == %q", layer)})
	}
	b.add(conj{"applies"})
	b.rule(r)
	if b.inert != "" {
		if !t.scope.waypointOnly { // in a waypoint, relayed TCP: as Istio, no status message
			t.warn(i, "in ztunnel this rule never matches: %s", b.inert)
		}
		return
	}
	if t.p.Action == Custom && !t.badCustom() {
		b.add(conj{"not data.mesh.providers" + "[" + quote(t.p.Provider) + "].allow"})
	}
	t.m.comment("%s", comment)
	t.m.rule(point+" contains "+t.entry(i), b.body)
	t.m.flush()
}

// ztunnelIgnores warns that ztunnel enforces rules[i] without its
// trustDomains, as Istio sends them neither to ztunnel nor into its
// status messages. A source left with nothing at L4 matches nothing, which
// the "never matches" warning reports instead.
func (t *policyTranslator) ztunnelIgnores(i int, r Rule) {
	enforced := func(f fieldValues) bool { return len(f.values) > 0 && l4Field(f.name) }
	for _, s := range r.From {
		if fields := s.fields(); len(s.TrustDomains)+len(s.NotTrustDomains) == 0 || !slices.ContainsFunc(fields[:], enforced) {
			continue
		}
		more := "less"
		if t.p.Action == Deny {
			more = "more"
		}
		t.warn(i, "ztunnel ignores trustDomains and notTrustDomains: at L4 the rule is enforced without them, as Istio does. This will be %s restrictive than requested.", more)
		return
	}
}

// httpAttributes lists the fields and keys of r ztunnel cannot see, sorted,
// named as Istio's status message names them.
func httpAttributes(r Rule) []string {
	var found []string
	for _, s := range r.From {
		for _, f := range s.fields() {
			if len(f.values) > 0 && !l4Field(f.name) && baseField(f.name) != "trustDomains" {
				found = append(found, f.name)
			}
		}
	}
	for _, o := range r.To {
		for _, f := range o.fields() {
			if len(f.values) > 0 && !l4Field(f.name) {
				found = append(found, f.name)
			}
		}
	}
	for _, c := range r.When {
		if k, _ := parseKey(c.Key); !l4Attrs[k.attr] {
			found = append(found, c.Key)
		}
	}
	slices.Sort(found)
	return slices.Compact(found)
}
