package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// EmptyBundleMetadata is the .manifest metadata that declares a bundle
// empty on purpose:
//
//	{"roots": ["mesh/policies/team"], "metadata": {"regomesh": {"empty": true}}}
//
// Without it a bundle with no module and no data is refused (an emptied
// or unmounted bundle directory must not read as "allow everything"), and
// a reload that would leave no policy package in force keeps the last good
// set. docs/bundles.md documents it.
const EmptyBundleMetadata = `"metadata": {"regomesh": {"empty": true}}`

// emptyBundleHint says what to check when a bundle or a set has no policy.
const emptyBundleHint = "check the bundle path and that its files are there (an emptied or unmounted directory would otherwise mean allow-all); " +
	"to load a bundle without policies on purpose, set " + EmptyBundleMetadata + " in its .manifest (docs/bundles.md)"

// declaredEmpty reports whether the manifest metadata says the bundle is
// meant to be empty: metadata.regomesh.empty is true.
func (b *Bundle) declaredEmpty() bool {
	ours, _ := b.raw.Manifest.Metadata["regomesh"].(map[string]any)
	empty, _ := ours["empty"].(bool)
	return empty
}

// checkNotEmpty refuses a bundle with no module and no data, unless its
// manifest declares it empty.
func (b *Bundle) checkNotEmpty() error {
	if len(b.raw.Modules) > 0 || len(b.raw.Data) > 0 || b.declaredEmpty() {
		return nil
	}
	return &bundleError{names: []string{b.Name}, detail: "is empty: no Rego module (.rego) and no data file (data.json, data.yaml)",
		hint: emptyBundleHint}
}

// policyPackages counts the policy packages the bundle defines, by
// module or by data: data.mesh.policies.<owner>.<name>.
func (b *Bundle) policyPackages() int {
	found := map[string]bool{}
	depth := len(policiesRef) + 2
	for i := range b.raw.Modules {
		if b.lazy != nil && b.lazy[i] != nil {
			found[b.lazy[i].key] = true // fastParse kept only policy packages
			continue
		}
		switch p := b.packagePath(i); {
		case len(p) == depth && p.HasPrefix(policiesRef):
			found[b.packageString(i)] = true
		case len(p) > depth && p.HasPrefix(policiesRef):
			found[p[:depth].String()] = true
		}
	}
	for owner, name := range dataPolicyPackages(b.raw.Data) {
		found[policiesRef.Append(ast.StringTerm(owner)).Append(ast.StringTerm(name)).String()] = true
	}
	return len(found)
}

// dataPolicyPackages yields (owner, name) for each package document that
// data defines under mesh.policies.
func dataPolicyPackages(data map[string]any) func(func(string, string) bool) {
	return func(yield func(string, string) bool) {
		for owner, names := range policyDocs(data) {
			for name := range names {
				if !yield(owner, name) {
					return
				}
			}
		}
	}
}

// policyDocs is data.mesh.policies as owner -> name -> package document.
func policyDocs(data map[string]any) map[string]map[string]any {
	mesh, _ := data["mesh"].(map[string]any)
	owners, _ := mesh["policies"].(map[string]any)
	out := make(map[string]map[string]any, len(owners))
	for owner, doc := range owners {
		if names, ok := doc.(map[string]any); ok {
			out[owner] = names
		}
	}
	return out
}

// setPolicyPackages counts the policy packages of a bundle set.
func setPolicyPackages(bundles []*Bundle) int {
	n := 0
	for _, b := range bundles {
		if b != nil && b.raw != nil {
			n += b.policyPackages()
		}
	}
	return n
}

// anyDeclaredEmpty reports whether a bundle of the set declares itself empty.
func anyDeclaredEmpty(bundles []*Bundle) bool {
	return slices.ContainsFunc(bundles, func(b *Bundle) bool { return b != nil && b.raw != nil && b.declaredEmpty() })
}

// lint finds what the library would silently ignore in a policy package:
// rules and data keys whose names look like a contribution point but are
// not one (denies, Allow, allow_scopes). Each warning names the file and
// line (or the data path) and the point meant, in file and line order.
func (b *Bundle) lint() []string {
	var out []string
	// Modules name their rules alike (applies, deny, ...): each name is
	// checked once.
	type verdict struct {
		point string
		ok    bool
	}
	verdicts := map[string]verdict{}
	misspelt := func(name string) (string, bool) {
		v, ok := verdicts[name]
		if !ok {
			v.point, v.ok = misspeltPoint(name)
			verdicts[name] = v
		}
		return v.point, v.ok
	}
	depth := len(policiesRef) + 2
	modules := slices.SortedFunc(slices.Values(b.raw.Modules), func(x, y bundle.ModuleFile) int { return strings.Compare(x.Path, y.Path) })
	for _, mf := range modules {
		m := mf.Parsed
		if m == nil {
			continue // fastParse's, which it found unremarkable (bundle_fastread.go)
		}
		if len(m.Package.Path) != depth || !m.Package.Path.HasPrefix(policiesRef) {
			continue
		}
		seen := usedNames(m)
		for _, r := range m.Rules {
			name := ruleName(r)
			point, ok := misspelt(name)
			if !ok || seen[name] {
				continue
			}
			seen[name] = true
			out = append(out, fmt.Sprintf("%s:%d: rule %s in %s is not a contribution point, so the library ignores it: did you mean %s? (points: %s)",
				bundleFileName(b.Name, mf), r.Location.Row, name, m.Package.Path, point, strings.Join(pointNames[:], ", ")))
		}
	}
	docs := policyDocs(b.raw.Data)
	for _, owner := range slices.Sorted(maps.Keys(docs)) {
		for _, name := range slices.Sorted(maps.Keys(docs[owner])) {
			pkg, _ := docs[owner][name].(map[string]any)
			for _, key := range slices.Sorted(maps.Keys(pkg)) {
				if point, ok := misspeltPoint(key); ok {
					out = append(out, fmt.Sprintf("%s: data.mesh.policies.%s.%s.%s is not a contribution point, so the library ignores it: did you mean %s? (points: %s)",
						b.Name, owner, name, key, point, strings.Join(pointNames[:], ", ")))
				}
			}
		}
	}
	return out
}

// usedNames are the variables rule bodies and values of m read: a rule
// named like a point that another rule reads (allow if allowed) is a
// helper, not a contribution the library misses.
func usedNames(m *ast.Module) map[string]bool {
	used := map[string]bool{}
	visit := func(v ast.Var) bool {
		used[string(v)] = true
		return false
	}
	for _, r := range m.Rules {
		for ; r != nil; r = r.Else {
			ast.WalkVars(r.Body, visit)
			if r.Head.Value != nil {
				ast.WalkVars(r.Head.Value, visit)
			}
			if r.Head.Key != nil {
				ast.WalkVars(r.Head.Key, visit)
			}
		}
	}
	return used
}

// ruleName is the first term of a rule's head reference: deny for
// `deny contains x if ...`, `deny[x] if ...` and `deny if ...`.
func ruleName(r *ast.Rule) string {
	ref := r.Head.Ref()
	if len(ref) == 0 {
		return ""
	}
	switch v := ref[0].Value.(type) {
	case ast.Var:
		return string(v)
	case ast.String:
		return string(v)
	}
	return ""
}

// misspeltPoint reports the contribution point name resembles without
// being it: the same letters in another case, a plural or past tense
// (denies, allowed), or one edit away (alow, dney, customdeny).
func misspeltPoint(name string) (string, bool) {
	if name == "" || slices.Contains(pointNames[:], name) {
		return "", false
	}
	lower := strings.ReplaceAll(strings.ToLower(name), "-", "_")
	forms := []string{lower}
	for _, suffix := range [][2]string{{"ies", "y"}, {"ied", "y"}, {"es", ""}, {"s", ""}, {"ed", ""}} {
		if stem, ok := strings.CutSuffix(lower, suffix[0]); ok && stem != "" {
			forms = append(forms, stem+suffix[1])
		}
	}
	for _, point := range pointNames {
		for _, form := range forms {
			if form == point || editDistance(form, point) <= 1 {
				return point, true
			}
		}
	}
	return "", false
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and swaps of adjacent letters.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
