package istio

import (
	"fmt"
	"slices"
	"strings"
)

// ruleBody builds the body of the rule contributing rules[i]: any from,
// any to, every when. At L4 it keeps what ztunnel sees and, as ztunnel
// does, lets a source or operation left with no field match nothing.
type ruleBody struct {
	t  *policyTranslator
	i  int
	l4 bool // ztunnel: only what it enforces, matched as it matches
	// waypoint: matched as Envoy's RBAC filter in a waypoint matches,
	// where that differs from ztunnel (see layerSensitive).
	waypoint bool
	body     conj
	inert    string // why the rule never matches at this layer
}

func (b *ruleBody) add(c conj) { b.body = append(b.body, c...) }

func (b *ruleBody) name(part string) string {
	if b.l4 {
		return fmt.Sprintf("rule%d_l4_%s", b.i, part)
	}
	return fmt.Sprintf("rule%d_%s", b.i, part)
}

func (b *ruleBody) rule(r Rule) {
	var sources, operations []fieldSet
	for j, s := range r.From {
		fields := s.fields()
		sources = append(sources, fieldSet{index: j, fields: fields[:]})
	}
	for j, o := range r.To {
		fields := o.fields()
		operations = append(operations, fieldSet{index: j, fields: fields[:]})
	}
	b.anyOf("from", "source", sources)
	b.anyOf("to", "operation", operations)
	for k, c := range r.When {
		b.when(k, c)
	}
}

// fieldSet is one source or operation.
type fieldSet struct {
	index  int
	fields []fieldValues
}

// anyOf requires one of the sources (or operations) to match.
func (b *ruleBody) anyOf(clause, what string, sets []fieldSet) {
	if len(sets) == 0 || b.inert != "" {
		return
	}
	var alts disj
	for _, s := range sets {
		if c := b.fieldSet(clause, s); len(c) > 0 {
			alts = union(alts, disj{c})
		}
	}
	if len(alts) == 0 {
		b.inert = fmt.Sprintf("every `%s` %s has only HTTP attributes", clause, what)
		if clause == "from" && slices.ContainsFunc(sets, holdsTrustDomains) {
			b.inert = fmt.Sprintf("every `%s` %s has only HTTP attributes or trustDomains, which ztunnel ignores", clause, what)
		}
		return
	}
	b.add(b.t.m.require(b.name(clause), alts))
}

// fieldSet is the conjunction of a source's (or operation's) fields.
func (b *ruleBody) fieldSet(clause string, s fieldSet) conj {
	var c conj
	for _, f := range s.fields {
		if len(f.values) == 0 || b.l4 && !l4Field(f.name) {
			continue
		}
		alts := b.t.fieldAlts(baseField(f.name), f.values, b.waypoint)
		name := fmt.Sprintf("rule%d_%s%d_%s", b.i, clause, s.index, snake(f.name))
		if f.not {
			c = append(c, b.t.m.exclude(name, alts)...)
		} else {
			c = append(c, b.t.m.require(name, alts)...)
		}
	}
	return c
}

// when requires one condition: any of its values, none of its notValues.
func (b *ruleBody) when(k int, c Condition) {
	if b.inert != "" {
		return
	}
	key, _ := parseKey(c.Key)
	if b.l4 && !l4Attrs[key.attr] {
		b.inert = fmt.Sprintf("its `when` condition on %s is HTTP-only", c.Key)
		return
	}
	name := fmt.Sprintf("rule%d_when%d", b.i, k)
	if len(c.Values) > 0 {
		b.add(b.t.m.require(name, b.t.conditionAlts(key, c.Values, b.waypoint)))
	}
	if len(c.NotValues) > 0 {
		b.add(b.t.m.exclude(name+"_not", b.t.conditionAlts(key, c.NotValues, b.waypoint)))
	}
}

// fieldAlts is how a source or operation field matches its values, in a
// waypoint or in ztunnel.
func (t *policyTranslator) fieldAlts(name string, values []string, waypoint bool) disj {
	switch name {
	case "principals":
		return principalMatcher.alts(t.principalsAt(values, waypoint))
	case "namespaces":
		return namespaceAlts(values, waypoint)
	case "serviceAccounts":
		return serviceAccountAlts(values, t.p.Namespace)
	case "trustDomains":
		return trustDomainAlts(t.expandTrustDomains(values))
	case "ipBlocks":
		return cidrAlts("input.source.ip", values)
	case "remoteIpBlocks":
		return cidrAlts("input.source.remote_ip", values)
	case "requestPrincipals":
		return requestPrincipalAlts(values)
	case "ports":
		return portAlts(values)
	case "hosts":
		return hostMatcher.alts(values)
	case "methods":
		return field("input.request.method").alts(values)
	case "paths":
		return pathAlts(values)
	}
	panic("istio: no matcher for field " + name) // fields() and this switch list the same names
}

// conditionAlts is how a `when` key matches its values, in a waypoint or
// in ztunnel.
func (t *policyTranslator) conditionAlts(k condKey, values []string, waypoint bool) disj {
	switch k.attr {
	case attrSourceIP:
		return cidrAlts("input.source.ip", values)
	case attrRemoteIP:
		return cidrAlts("input.source.remote_ip", values)
	case attrDestinationIP:
		return cidrAlts("input.destination.ip", values)
	case attrSourceNamespace:
		return namespaceAlts(values, waypoint)
	case attrSourcePrincipal:
		return principalMatcher.alts(t.principalsAt(values, waypoint))
	case attrSourceServiceAccount:
		return serviceAccountAlts(values, t.p.Namespace)
	case attrSourceTrustDomain:
		return trustDomainAlts(t.expandTrustDomains(values))
	case attrDestinationPort:
		return portAlts(values)
	case attrConnectionSNI:
		return field("input.connection.sni").alts(values)
	case attrRequestHeader:
		ref := "input.request.headers[" + quote(k.header) + "]"
		return strMatcher{ref: ref, present: conj{ref}}.alts(values) // "*": the header is present (Envoy's present_match)
	case attrRequestPrincipal:
		return requestPrincipalAlts(values)
	case attrRequestAudiences:
		return listMatcher{ref: "input.request.auth.audiences", elem: "audience"}.alts(values)
	case attrRequestPresenter:
		return field("input.request.auth.presenter").alts(values)
	case attrRequestClaim:
		ref := "input.request.auth.claims"
		for _, name := range k.claim {
			ref += refKey(name)
		}
		return listMatcher{ref: ref, orString: true, elem: "claim"}.alts(values)
	}
	panic(fmt.Sprintf("istio: no matcher for attribute %d", k.attr)) // parseKey returns only the attributes above
}

// principalsAt is the principals a waypoint or ztunnel compares: Istio
// expands trust domain aliases for waypoints (MigrateTrustDomain) but not
// for ztunnel, which compares the principals as written.
func (t *policyTranslator) principalsAt(values []string, waypoint bool) []string {
	if !waypoint {
		return values
	}
	return t.expandPrincipals(values)
}

// expandPrincipals writes principals as Istio's ReplaceTrustDomainAliases
// does for waypoints. A principal "<td>/ns/<ns>/sa/<sa>" whose trust
// domain part is, or matches as a prefix or suffix pattern either way
// round, one of the mesh's trust domains (or is "cluster.local") becomes
// the same identity in each trust domain of the mesh, except that a
// trust domain its "*<suffix>" already matches keeps the pattern as
// written. So "cluster*/ns/a/sa/b" becomes "cluster.local/ns/a/sa/b".
// Principals whose trust domain is "*", that match no trust domain of the
// mesh, or that are not of that form stay as they are.
func (t *policyTranslator) expandPrincipals(values []string) []string {
	tds := t.opts.trustDomains()
	var out []string
	for _, v := range values {
		parts := strings.Split(v, "/")
		if len(parts) != 5 || parts[0] == "*" || !trustDomainPatternMatches(parts[0], tds) && parts[0] != istioLocalTrustDomain {
			out = append(out, v)
			continue
		}
		for _, td := range tds {
			if suffixPattern(td, parts[0]) {
				out = append(out, v)
				continue
			}
			out = append(out, td+"/"+strings.Join(parts[1:], "/"))
		}
	}
	return dedupe(out)
}

// trustDomainPatternMatches is Istio's trustdomain stringMatch: a equals a
// trust domain of the list, or one is a "*" prefix or suffix pattern that
// the other matches.
func trustDomainPatternMatches(a string, tds []string) bool {
	return slices.ContainsFunc(tds, func(td string) bool {
		return a == td || td == "*" || prefixPattern(a, td) || prefixPattern(td, a) || suffixPattern(a, td) || suffixPattern(td, a)
	})
}

// prefixPattern says whether pattern ends with "*" and a starts with the rest.
func prefixPattern(a, pattern string) bool {
	rest, ok := strings.CutSuffix(pattern, "*")
	return ok && strings.HasPrefix(a, rest)
}

// suffixPattern says whether pattern starts with "*" and a ends with the rest.
func suffixPattern(a, pattern string) bool {
	rest, ok := strings.CutPrefix(pattern, "*")
	return ok && strings.HasSuffix(a, rest)
}

// expandTrustDomains replaces a trust domain of the mesh by all of them,
// as Istio's ExpandTrustDomainAliases does.
func (t *policyTranslator) expandTrustDomains(values []string) []string {
	tds := t.opts.trustDomains()
	var out []string
	for _, v := range values {
		if slices.Contains(tds, v) {
			out = append(out, tds...)
			continue
		}
		out = append(out, v)
	}
	return dedupe(out)
}

// layerSensitive says whether r matches otherwise in a waypoint than in
// ztunnel, beyond the HTTP attributes ztunnel drops: a namespace pattern
// with "*" (namespaces, notNamespaces, source.namespace) is a regular
// expression over the principal in a waypoint and a string match in
// ztunnel; ztunnel ignores trustDomains; and only a waypoint expands
// trust domain aliases in principals. Such a rule gets one contribution
// per layer.
func (t *policyTranslator) layerSensitive(r Rule) bool {
	wild := func(values []string) bool {
		return slices.ContainsFunc(values, func(v string) bool { return v != "*" && strings.Contains(v, "*") })
	}
	aliased := func(values []string) bool { return !slices.Equal(t.expandPrincipals(values), dedupe(values)) }
	if hasTrustDomains(r) {
		return true
	}
	for _, s := range r.From {
		if wild(s.Namespaces) || wild(s.NotNamespaces) || aliased(s.Principals) || aliased(s.NotPrincipals) {
			return true
		}
	}
	for _, c := range r.When {
		k, _ := parseKey(c.Key)
		switch {
		case k.attr == attrSourceNamespace && (wild(c.Values) || wild(c.NotValues)):
			return true
		case k.attr == attrSourcePrincipal && (aliased(c.Values) || aliased(c.NotValues)):
			return true
		}
	}
	return false
}

// hasTrustDomains says whether some source of r sets trustDomains or
// notTrustDomains, which ztunnel ignores: Istio neither sends them to it
// nor counts them as HTTP attributes, so at L4 the source is matched
// without them (and a source with nothing else matches nothing).
func hasTrustDomains(r Rule) bool {
	return slices.ContainsFunc(r.From, func(s Source) bool { return len(s.TrustDomains)+len(s.NotTrustDomains) > 0 })
}

func holdsTrustDomains(s fieldSet) bool {
	return slices.ContainsFunc(s.fields, func(f fieldValues) bool { return baseField(f.name) == "trustDomains" && len(f.values) > 0 })
}
