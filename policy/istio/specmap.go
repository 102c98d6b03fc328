package istio

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// convertMap is convert of an AuthorizationPolicy whose spec is still the
// decoded value: what decodeSpec and convert make of it, without the
// protobuf message between. It says false, and decodeSpec and convert
// speak, for anything but the plain case: a key by its proto name, a
// value of another type than the field's, a null, an empty list, an entry
// without its source or operation.
func convertMap(meta *metav1.ObjectMeta, raw any, at *Policy) (*Policy, error, bool) {
	spec, ok := raw.(map[string]any)
	if !ok {
		return nil, nil, false
	}
	p := &Policy{Namespace: meta.Namespace, Name: meta.Name, Action: Allow, Origin: at.Origin, file: at.file, lines: at.lines}
	for key, v := range spec {
		switch key {
		case "action":
			p.Action, ok = mapAction(v)
		case "provider":
			var provider map[string]any
			if provider, ok = v.(map[string]any); ok && len(provider) > 0 {
				p.Provider, ok = onlyString(provider, "name")
			}
		case "selector":
			p.Selector, ok = mapSelector(v)
		case "targetRef":
			var ref TargetRef
			ref, ok = mapTargetRef(v)
			p.TargetRefs = append([]TargetRef{ref}, p.TargetRefs...)
		case "targetRefs":
			ok = eachMap(v, func(m map[string]any) bool {
				ref, ok := mapTargetRef(m)
				p.TargetRefs = append(p.TargetRefs, ref)
				return ok
			})
		case "rules":
			ok = eachMap(v, func(m map[string]any) bool {
				r, ok := mapRule(m)
				p.Rules = append(p.Rules, r)
				return ok
			})
		default:
			ok = false
		}
		if !ok {
			return nil, nil, false
		}
	}
	ps := &problems{p: p, kind: ErrDecode}
	p.DryRun = convertDryRun(meta.Annotations, ps)
	if err := ps.err(); err != nil {
		return nil, err, true
	}
	return p, nil, true
}

func mapAction(v any) (Action, bool) {
	switch v {
	case "ALLOW":
		return Allow, true
	case "DENY":
		return Deny, true
	case "AUDIT":
		return Audit, true
	case "CUSTOM":
		return Custom, true
	}
	return "", false
}

func mapSelector(v any) (map[string]string, bool) {
	sel, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	out := map[string]string{}
	for key, labels := range sel {
		if key != "matchLabels" {
			return nil, false
		}
		m, ok := labels.(map[string]any)
		if !ok {
			return nil, false
		}
		for k, v := range m {
			if out[k], ok = v.(string); !ok {
				return nil, false
			}
		}
	}
	return out, true
}

func mapTargetRef(v any) (TargetRef, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return TargetRef{}, false
	}
	var ref TargetRef
	for key, v := range m {
		s, ok := v.(string)
		if !ok {
			return TargetRef{}, false
		}
		switch key {
		case "group":
			ref.Group = s
		case "kind":
			ref.Kind = s
		case "name":
			ref.Name = s
		case "namespace":
			ref.Namespace = s
		default:
			return TargetRef{}, false
		}
	}
	return ref, true
}

func mapRule(m map[string]any) (Rule, bool) {
	var r Rule
	for key, v := range m {
		var ok bool
		switch key {
		case "from":
			ok = eachMap(v, func(m map[string]any) bool {
				src, ok := m["source"].(map[string]any)
				if !ok || len(m) != 1 {
					return false
				}
				s, ok := mapSource(src)
				r.From = append(r.From, s)
				return ok
			})
		case "to":
			ok = eachMap(v, func(m map[string]any) bool {
				op, ok := m["operation"].(map[string]any)
				if !ok || len(m) != 1 {
					return false
				}
				o, ok := mapOperation(op)
				r.To = append(r.To, o)
				return ok
			})
		case "when":
			ok = eachMap(v, func(m map[string]any) bool {
				c, ok := mapCondition(m)
				r.When = append(r.When, c)
				return ok
			})
		}
		if !ok {
			return Rule{}, false
		}
	}
	return r, true
}

func mapSource(m map[string]any) (Source, bool) {
	var s Source
	lists := map[string]*[]string{
		"principals": &s.Principals, "notPrincipals": &s.NotPrincipals,
		"requestPrincipals": &s.RequestPrincipals, "notRequestPrincipals": &s.NotRequestPrincipals,
		"namespaces": &s.Namespaces, "notNamespaces": &s.NotNamespaces,
		"serviceAccounts": &s.ServiceAccounts, "notServiceAccounts": &s.NotServiceAccounts,
		"trustDomains": &s.TrustDomains, "notTrustDomains": &s.NotTrustDomains,
		"ipBlocks": &s.IPBlocks, "notIpBlocks": &s.NotIPBlocks,
		"remoteIpBlocks": &s.RemoteIPBlocks, "notRemoteIpBlocks": &s.NotRemoteIPBlocks,
	}
	return s, mapLists(m, lists)
}

func mapOperation(m map[string]any) (Operation, bool) {
	var o Operation
	lists := map[string]*[]string{
		"hosts": &o.Hosts, "notHosts": &o.NotHosts, "ports": &o.Ports, "notPorts": &o.NotPorts,
		"methods": &o.Methods, "notMethods": &o.NotMethods, "paths": &o.Paths, "notPaths": &o.NotPaths,
	}
	return o, mapLists(m, lists)
}

func mapCondition(m map[string]any) (Condition, bool) {
	var c Condition
	key, ok := m["key"].(string)
	if !ok {
		return Condition{}, false
	}
	c.Key = key
	rest := make(map[string]any, len(m))
	for k, v := range m {
		if k != "key" {
			rest[k] = v
		}
	}
	return c, mapLists(rest, map[string]*[]string{"values": &c.Values, "notValues": &c.NotValues})
}

// mapLists fills the lists of strings m names, each by its JSON name.
func mapLists(m map[string]any, lists map[string]*[]string) bool {
	for key, v := range m {
		list, known := lists[key]
		items, ok := v.([]any)
		if !known || !ok || len(items) == 0 {
			return false
		}
		out := make([]string, len(items))
		for i, item := range items {
			if out[i], ok = item.(string); !ok {
				return false
			}
		}
		*list = out
	}
	return true
}

// eachMap calls f with each element of the non-empty list v, all mappings.
func eachMap(v any, f func(map[string]any) bool) bool {
	items, ok := v.([]any)
	if !ok || len(items) == 0 {
		return false
	}
	for _, item := range items {
		m, ok := item.(map[string]any)
		if !ok || !f(m) {
			return false
		}
	}
	return true
}

// onlyString is m[key], a string, where m holds nothing else.
func onlyString(m map[string]any, key string) (string, bool) {
	s, ok := m[key].(string)
	return s, ok && len(m) == 1
}
