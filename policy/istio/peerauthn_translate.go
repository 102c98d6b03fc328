package istio

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// PeerRoot is the bundle root translated PeerAuthentications live under:
// each is the package mesh.policies.istio_peerauthentication["<namespace>.<name>"],
// apart from AuthorizationPolicies, which may share its name.
const PeerRoot = "mesh/policies/istio_peerauthentication"

// PeerModuleFile is the bundle file of pa's module.
func PeerModuleFile(pa *PeerAuthentication) string {
	return PeerRoot + "/" + pa.Namespace + "/" + pa.Name + ".rego"
}

// PeerPackage is pa's Rego package.
func PeerPackage(pa *PeerAuthentication) string {
	return "mesh.policies.istio_peerauthentication[" + quote(pa.Namespace+"."+pa.Name) + "]"
}

// plaintext holds for a connection without a verified peer: it did not
// arrive through an HBONE tunnel. Written as a negated equality so that an
// absent field counts as plaintext.
const plaintext = "not input.connection.mtls == true"

// peerTree is a set's PeerAuthentications by level, resolved as Istio's
// ComposePeerAuthentication does: for a destination and port the mode is
// the port's in the workload-level policy, else the workload-level
// policy's, else the namespace's, else the mesh's, the first of these that
// is not UNSET; PERMISSIVE when none is.
//
// Invariant: each (policy, slot) that decides STRICT somewhere is written
// once, in that policy's module, as a deny of plaintext under the
// conditions where it decides: its own scope minus every more specific
// policy (or port) that sets a mode there. So the entry that refuses names
// the PeerAuthentication whose STRICT decided.
type peerTree struct {
	opts Options
	// mesh is the mesh-level policy (root namespace, no selector) in force.
	mesh *PeerAuthentication
	// namespaces holds the namespace-level policy in force per namespace.
	namespaces map[string]*PeerAuthentication
	// workloads holds the workload-level policies per namespace, by name:
	// a workload selected by several takes the first.
	workloads map[string][]*PeerAuthentication
	// ignored says why a policy decides nothing.
	ignored  map[*PeerAuthentication]string
	warnings []Warning
}

// newPeerTree sorts the policies into levels. Where Istio takes the oldest
// of several at one level, regomesh, which has no creation times in files,
// takes the first by name, and warns.
func newPeerTree(pas []*PeerAuthentication, opts Options) *peerTree {
	t := &peerTree{opts: opts, namespaces: map[string]*PeerAuthentication{}, workloads: map[string][]*PeerAuthentication{}, ignored: map[*PeerAuthentication]string{}}
	sorted := slices.SortedFunc(slices.Values(pas), func(a, b *PeerAuthentication) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, pa := range sorted {
		if pa.Selector != nil && len(pa.Selector) == 0 {
			t.warn(pa, "workload selector specified without labels: the policy applies to its whole namespace")
		}
		switch {
		case pa.Namespace == opts.RootNamespace && pa.workloadLevel():
			t.ignore(pa, "a selector in the root namespace %s selects nothing, as in Istio: put a workload-level PeerAuthentication in the workloads' namespace", opts.RootNamespace)
		case pa.Namespace == opts.RootNamespace && t.mesh != nil:
			t.ignore(pa, "the mesh already has a mesh-wide PeerAuthentication, %s: Istio applies the oldest; regomesh, without creation times, applies the first by name", t.mesh.ID())
		case pa.Namespace == opts.RootNamespace:
			t.mesh = pa
		case !pa.workloadLevel() && t.namespaces[pa.Namespace] != nil:
			t.ignore(pa, "namespace %s already has a namespace-level PeerAuthentication, %s: Istio applies the oldest; regomesh, without creation times, applies the first by name", pa.Namespace, t.namespaces[pa.Namespace].ID())
		case !pa.workloadLevel():
			t.namespaces[pa.Namespace] = pa
		default:
			t.overlaps(pa)
			t.workloads[pa.Namespace] = append(t.workloads[pa.Namespace], pa)
		}
	}
	return t
}

func (t *peerTree) warn(pa *PeerAuthentication, format string, args ...any) {
	t.warnings = append(t.warnings, Warning{Policy: pa.ID(), Rule: -1, Message: fmt.Sprintf(format, args...)})
}

func (t *peerTree) ignore(pa *PeerAuthentication, format string, args ...any) {
	t.ignored[pa] = fmt.Sprintf(format, args...)
	t.warn(pa, "PeerAuthentication ignored: %s", t.ignored[pa])
}

// overlaps warns when pa may select a workload that an earlier
// workload-level policy of its namespace selects too.
func (t *peerTree) overlaps(pa *PeerAuthentication) {
	for _, earlier := range t.workloads[pa.Namespace] {
		labels := maps.Clone(earlier.Selector)
		compatible := true
		for k, v := range pa.Selector {
			if have, ok := labels[k]; ok && have != v {
				compatible = false
			}
			labels[k] = v
		}
		if compatible {
			t.warn(pa, "a workload labelled %s is also selected by %s: Istio applies the oldest; regomesh, without creation times, applies the first by name, %s",
				labelList(labels), earlier.ID(), earlier.ID())
		}
	}
}

// inherited is the mode a policy at pa's level inherits when UNSET, and
// the policy it comes from ("" for the default).
func (t *peerTree) inherited(pa *PeerAuthentication) (MTLSMode, string) {
	if pa.workloadLevel() {
		if ns := t.namespaces[pa.Namespace]; ns != nil && ns.Mode.set() {
			return ns.Mode, ns.ID()
		}
	}
	if pa != t.mesh && t.mesh != nil && t.mesh.Mode.set() {
		return t.mesh.Mode, t.mesh.ID()
	}
	return ModePermissive, ""
}

// selects is the condition that pa's selector (or namespace) matches the
// destination.
func (t *peerTree) selects(pa *PeerAuthentication) conj {
	c := conj{"input.destination.namespace == " + quote(pa.Namespace)}
	for _, k := range slices.Sorted(maps.Keys(pa.Selector)) {
		c = append(c, "input.destination.labels"+refKey(k)+" == "+quote(pa.Selector[k]))
	}
	return c
}

// applies is the condition that workload-level pa is the one in force for
// the destination: it selects it, and no policy before it does.
func (t *peerTree) applies(m *module, pa *PeerAuthentication) conj {
	c := t.selects(pa)
	var before disj
	for _, w := range t.workloads[pa.Namespace] {
		if w == pa {
			break
		}
		before = append(before, t.selects(w))
	}
	if len(before) > 0 {
		c = append(c, m.exclude("selected_by_earlier", before)...)
	}
	return c
}

// explicitPorts are pa's ports whose mode is not UNSET, sorted.
func explicitPorts(pa *PeerAuthentication) []uint32 {
	var ports []uint32
	for port, mode := range pa.PortLevel {
		if mode.set() {
			ports = append(ports, port)
		}
	}
	slices.Sort(ports)
	return ports
}

func portIn(ports []uint32) string {
	if len(ports) == 1 {
		return "input.destination.port == " + strconv.FormatUint(uint64(ports[0]), 10)
	}
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.FormatUint(uint64(p), 10)
	}
	return "input.destination.port in {" + strings.Join(s, ", ") + "}"
}

// workloadDecides is the condition that a workload-level policy of
// namespace decides the destination's mode: the one in force sets a mode,
// or one for the destination's port.
func (t *peerTree) workloadDecides(m *module, namespace string) disj {
	var out disj
	for _, w := range t.workloads[namespace] {
		switch ports := explicitPorts(w); {
		case w.Mode.set():
			out = append(out, t.applies(m, w))
		case len(ports) > 0:
			out = append(out, append(t.applies(m, w), portIn(ports)))
		}
	}
	return out
}

// translate writes pa's module.
func (t *peerTree) translate(pa *PeerAuthentication) string {
	body := newModule()
	var scope string
	switch {
	case t.ignored[pa] != "":
		scope = "nothing: " + t.ignored[pa]
	case pa == t.mesh:
		scope = "the whole mesh (root namespace " + pa.Namespace + ", no selector)"
		t.meshRules(body, pa)
	case !pa.workloadLevel():
		scope = "every workload in namespace " + pa.Namespace
		t.namespaceRules(body, pa)
	default:
		scope = "workloads labelled " + labelList(pa.Selector) + " in namespace " + pa.Namespace
		t.workloadRules(body, pa)
	}
	head := newModule()
	head.comment("Code generated by regomesh from PeerAuthentication %s. DO NOT EDIT.", pa.ID())
	if pa.Origin != "" {
		head.comment("Source: %s", pa.Origin)
	}
	head.comment("")
	head.comment("%s: %s.", t.describeMode(pa), scope)
	for _, port := range slices.Sorted(maps.Keys(pa.PortLevel)) {
		head.comment("portLevelMtls %d: %s.", port, pa.PortLevel[port])
	}
	head.comment("STRICT refuses plaintext (input.connection.mtls false) at L4 and L7 where this")
	head.comment("policy decides the mode: the most specific PeerAuthentication that sets one does")
	head.comment("(port, workload, namespace, mesh). mTLS connections are never affected.")
	head.line("package %s", PeerPackage(pa))
	if body.b.Len() == 0 {
		return head.String()
	}
	return head.String() + "\n" + body.String()
}

func (t *peerTree) describeMode(pa *PeerAuthentication) string {
	if pa.Mode.set() {
		return "mtls.mode " + string(pa.Mode)
	}
	mode, from := t.inherited(pa)
	if from == "" {
		return "mtls.mode UNSET (" + string(mode) + " by default)"
	}
	return fmt.Sprintf("mtls.mode UNSET (inherits %s from %s)", mode, from)
}

// meshRules: STRICT wherever no namespace-level or workload-level policy
// sets a mode.
func (t *peerTree) meshRules(m *module, pa *PeerAuthentication) {
	if pa.Mode != ModeStrict {
		return
	}
	var below disj
	var namespaces []string
	for _, ns := range slices.Sorted(maps.Keys(t.namespaces)) {
		if t.namespaces[ns].Mode.set() {
			namespaces = append(namespaces, ns)
		}
	}
	below = union(below, equality("input.destination.namespace", namespaces))
	for _, ns := range slices.Sorted(maps.Keys(t.workloads)) {
		if !slices.Contains(namespaces, ns) {
			below = union(below, t.workloadDecides(m, ns))
		}
	}
	c := conj{plaintext}
	if len(below) > 0 {
		c = append(c, m.exclude("decided_below", below)...)
	}
	t.deny(m, pa, "mtls", "STRICT mTLS: plaintext refused by PeerAuthentication "+pa.ID(),
		"STRICT for every destination whose namespace and workload set no mode of their own.", c)
}

// namespaceRules: STRICT in the namespace, but where a workload-level
// policy sets a mode.
func (t *peerTree) namespaceRules(m *module, pa *PeerAuthentication) {
	if pa.Mode != ModeStrict {
		return
	}
	c := conj{"input.destination.namespace == " + quote(pa.Namespace), plaintext}
	if below := t.workloadDecides(m, pa.Namespace); len(below) > 0 {
		c = append(c, m.exclude("workload_level", below)...)
	}
	t.deny(m, pa, "mtls", "STRICT mTLS: plaintext refused by PeerAuthentication "+pa.ID(),
		"STRICT for the namespace's workloads that no workload-level policy sets a mode for.", c)
}

// workloadRules: the workloads it selects first, STRICT on its STRICT
// ports and, when its own mode is STRICT, on every port it does not list.
func (t *peerTree) workloadRules(m *module, pa *PeerAuthentication) {
	ports := explicitPorts(pa)
	if pa.Mode == ModeStrict {
		c := append(t.applies(m, pa), plaintext)
		if len(ports) > 0 {
			c = append(c, m.exclude("port_level", disj{{portIn(ports)}})...)
		}
		t.deny(m, pa, "mtls", "STRICT mTLS: plaintext refused by PeerAuthentication "+pa.ID(),
			"STRICT for the selected workloads, on the ports portLevelMtls does not set.", c)
	}
	for _, port := range ports {
		if pa.PortLevel[port] != ModeStrict {
			continue
		}
		c := append(t.applies(m, pa), portIn([]uint32{port}), plaintext)
		t.deny(m, pa, fmt.Sprintf("portLevelMtls[%d]", port), fmt.Sprintf("STRICT mTLS on port %d: plaintext refused by PeerAuthentication %s", port, pa.ID()),
			fmt.Sprintf("STRICT on port %d of the selected workloads.", port), c)
	}
}

func (t *peerTree) deny(m *module, pa *PeerAuthentication, rule, reason, comment string, body conj) {
	m.comment("%s", comment)
	m.rule(fmt.Sprintf(`deny contains {"policy": %s, "rule": %s, "reason": %s}`, quote(pa.ID()), quote(rule), quote(reason)), body)
	m.flush()
}

func labelList(labels map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, k+"="+labels[k])
	}
	return strings.Join(out, ", ")
}
