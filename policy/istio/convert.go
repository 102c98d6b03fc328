package istio

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	apiv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// dryRunAnnotation marks a policy evaluated and logged but not enforced.
const dryRunAnnotation = "istio.io/dry-run"

// Convert turns an AuthorizationPolicy as the Kubernetes API serves it
// (client-go's security.istio.io/v1 type) into a Policy. Errors (wrapping
// ErrDecode) report entries the protobuf form allows but Istio refuses:
// null rules, sources and operations. Validate the result before use.
func Convert(obj *clientv1.AuthorizationPolicy) (*Policy, error) {
	return convert(&obj.ObjectMeta, &obj.Spec, &Policy{})
}

// convert fills a copy of at (which carries the origin, for messages).
func convert(meta *metav1.ObjectMeta, spec *apiv1beta1.AuthorizationPolicy, at *Policy) (*Policy, error) {
	p := &Policy{
		Namespace: meta.Namespace, Name: meta.Name,
		Origin: at.Origin, file: at.file, lines: at.lines,
	}
	ps := &problems{p: p, kind: ErrDecode}
	p.Action = convertAction(spec.GetAction(), ps)
	p.Provider = spec.GetProvider().GetName()
	p.DryRun = convertDryRun(meta.Annotations, ps)
	if sel := spec.GetSelector(); sel != nil {
		p.Selector = maps.Clone(sel.GetMatchLabels())
		if p.Selector == nil {
			p.Selector = map[string]string{}
		}
	}
	refs := spec.GetTargetRefs()
	if ref := spec.GetTargetRef(); ref != nil {
		refs = append([]*typev1beta1.PolicyTargetReference{ref}, refs...)
	}
	for _, ref := range refs {
		p.TargetRefs = append(p.TargetRefs, TargetRef{Group: ref.GetGroup(), Kind: ref.GetKind(), Name: ref.GetName(), Namespace: ref.GetNamespace()})
	}
	for i, r := range spec.GetRules() {
		p.Rules = append(p.Rules, convertRule(r, fmt.Sprintf("spec.rules[%d]", i), ps))
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	return p, nil
}

func convertAction(a apiv1beta1.AuthorizationPolicy_Action, ps *problems) Action {
	switch a {
	case apiv1beta1.AuthorizationPolicy_ALLOW:
		return Allow
	case apiv1beta1.AuthorizationPolicy_DENY:
		return Deny
	case apiv1beta1.AuthorizationPolicy_AUDIT:
		return Audit
	case apiv1beta1.AuthorizationPolicy_CUSTOM:
		return Custom
	}
	ps.add("spec.action", "unknown action %d: expected ALLOW, DENY, AUDIT or CUSTOM", a)
	return ""
}

// convertDryRun reads the annotation as Istio does (strconv.ParseBool).
// Istio logs an unreadable value and enforces the policy; a typo there
// would enforce what the user meant to try out, so it is an error here.
func convertDryRun(annotations map[string]string, ps *problems) bool {
	v, ok := annotations[dryRunAnnotation]
	if !ok {
		return false
	}
	dry, err := strconv.ParseBool(v)
	if err != nil {
		ps.add("metadata.annotations["+dryRunAnnotation+"]", "%q is not a boolean: use \"true\" or \"false\"", v)
	}
	return dry
}

func convertRule(r *apiv1beta1.Rule, path string, ps *problems) Rule {
	var out Rule
	if r == nil {
		ps.add(path, "null rule: use {} for a rule that matches everything")
		return out
	}
	for i, f := range r.GetFrom() {
		if f.GetSource() == nil {
			ps.add(fmt.Sprintf("%s.from[%d].source", path, i), "required: each from entry needs a source")
			continue
		}
		out.From = append(out.From, convertSource(f.GetSource()))
	}
	for i, t := range r.GetTo() {
		if t.GetOperation() == nil {
			ps.add(fmt.Sprintf("%s.to[%d].operation", path, i), "required: each to entry needs an operation")
			continue
		}
		out.To = append(out.To, convertOperation(t.GetOperation()))
	}
	for i, c := range r.GetWhen() {
		if c == nil {
			ps.add(fmt.Sprintf("%s.when[%d]", path, i), "null condition")
			continue
		}
		out.When = append(out.When, Condition{Key: c.GetKey(), Values: slices.Clone(c.GetValues()), NotValues: slices.Clone(c.GetNotValues())})
	}
	return out
}

func convertSource(s *apiv1beta1.Source) Source {
	return Source{
		Principals: slices.Clone(s.GetPrincipals()), NotPrincipals: slices.Clone(s.GetNotPrincipals()),
		RequestPrincipals: slices.Clone(s.GetRequestPrincipals()), NotRequestPrincipals: slices.Clone(s.GetNotRequestPrincipals()),
		Namespaces: slices.Clone(s.GetNamespaces()), NotNamespaces: slices.Clone(s.GetNotNamespaces()),
		ServiceAccounts: slices.Clone(s.GetServiceAccounts()), NotServiceAccounts: slices.Clone(s.GetNotServiceAccounts()),
		TrustDomains: slices.Clone(s.GetTrustDomains()), NotTrustDomains: slices.Clone(s.GetNotTrustDomains()),
		IPBlocks: slices.Clone(s.GetIpBlocks()), NotIPBlocks: slices.Clone(s.GetNotIpBlocks()),
		RemoteIPBlocks: slices.Clone(s.GetRemoteIpBlocks()), NotRemoteIPBlocks: slices.Clone(s.GetNotRemoteIpBlocks()),
	}
}

func convertOperation(o *apiv1beta1.Operation) Operation {
	return Operation{
		Hosts: slices.Clone(o.GetHosts()), NotHosts: slices.Clone(o.GetNotHosts()),
		Ports: slices.Clone(o.GetPorts()), NotPorts: slices.Clone(o.GetNotPorts()),
		Methods: slices.Clone(o.GetMethods()), NotMethods: slices.Clone(o.GetNotMethods()),
		Paths: slices.Clone(o.GetPaths()), NotPaths: slices.Clone(o.GetNotPaths()),
	}
}
