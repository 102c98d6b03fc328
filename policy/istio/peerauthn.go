package istio

import (
	"fmt"
	"maps"

	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MTLSMode is a PeerAuthentication's mtls.mode.
type MTLSMode string

// The modes of PeerAuthentication. UNSET inherits the parent's mode
// (port from workload, workload from namespace, namespace from mesh); with
// nothing set the mode is PERMISSIVE. ztunnel accepts plaintext under
// PERMISSIVE and DISABLE alike: only STRICT refuses it.
const (
	ModeUnset      MTLSMode = "UNSET"
	ModeDisable    MTLSMode = "DISABLE"
	ModePermissive MTLSMode = "PERMISSIVE"
	ModeStrict     MTLSMode = "STRICT"
)

// set says whether the mode decides, rather than inheriting.
func (m MTLSMode) set() bool { return m != ModeUnset && m != "" }

// PeerAuthentication is one security.istio.io PeerAuthentication in the
// translator's terms. A policy in the root namespace without a selector
// sets the mesh's mode, one elsewhere without a selector its namespace's,
// one with a selector its namespace's matching workloads' (a selector in
// the root namespace selects nothing, as in Istio).
type PeerAuthentication struct {
	Namespace string
	Name      string
	// Selector is spec.selector.matchLabels; nil when spec.selector is absent.
	Selector map[string]string
	// Mode is spec.mtls.mode; UNSET when spec.mtls is absent.
	Mode MTLSMode
	// PortLevel is spec.portLevelMtls: the mode of workload ports, which
	// overrides Mode on that port. Nil when absent; Istio refuses it empty,
	// and without a selector.
	PortLevel map[uint32]MTLSMode

	// Origin, file and lines locate the resource for messages, as in Policy.
	Origin string
	file   string
	lines  *lineIndex
}

// ID is the resource's name in decisions: "<namespace>/<name>".
func (pa *PeerAuthentication) ID() string { return pa.Namespace + "/" + pa.Name }

func (pa *PeerAuthentication) position(field string) string {
	return positionIn(pa.file, pa.lines, field, pa.Origin)
}

// workloadLevel says whether pa selects workloads (has labels to match).
func (pa *PeerAuthentication) workloadLevel() bool { return len(pa.Selector) > 0 }

// Resources are the Istio security resources regomesh translates, as
// DecodeAll reads them from a stream.
type Resources struct {
	AuthorizationPolicies []*Policy
	PeerAuthentications   []*PeerAuthentication
	// RequestAuthentications are not translated to Rego: waypoints
	// validate the JWTs they describe and hand the result to policy as
	// input.request.auth.
	RequestAuthentications []*RequestAuthentication
}

// ConvertPeerAuthentication turns a PeerAuthentication as the Kubernetes
// API serves it (client-go's security.istio.io/v1 type) into the
// translator's type. Validate the result (ValidatePeerAuthentication)
// before use.
func ConvertPeerAuthentication(obj *clientv1.PeerAuthentication) *PeerAuthentication {
	return convertPeer(&obj.ObjectMeta, &obj.Spec, &PeerAuthentication{})
}

// convertPeer fills a copy of at (which carries the origin, for messages).
func convertPeer(meta *metav1.ObjectMeta, spec *apiv1beta1.PeerAuthentication, at *PeerAuthentication) *PeerAuthentication {
	pa := &PeerAuthentication{
		Namespace: meta.Namespace, Name: meta.Name,
		Mode:   convertMode(spec.GetMtls()),
		Origin: at.Origin, file: at.file, lines: at.lines,
	}
	if sel := spec.GetSelector(); sel != nil {
		pa.Selector = maps.Clone(sel.GetMatchLabels())
		if pa.Selector == nil {
			pa.Selector = map[string]string{}
		}
	}
	if spec.PortLevelMtls != nil {
		pa.PortLevel = make(map[uint32]MTLSMode, len(spec.PortLevelMtls))
		for port, mtls := range spec.PortLevelMtls {
			pa.PortLevel[port] = convertMode(mtls)
		}
	}
	return pa
}

func convertMode(mtls *apiv1beta1.PeerAuthentication_MutualTLS) MTLSMode {
	switch mtls.GetMode() {
	case apiv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable
	case apiv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return ModePermissive
	case apiv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict
	}
	return ModeUnset
}

// ValidatePeerAuthentication reports every reason Istio's admission would
// refuse pa (ValidatePeerAuthentication in Istio): portLevelMtls without a
// selector, or empty, ports outside 1..65535, empty or wildcard selector
// labels; and names that are not Kubernetes names. Errors are FieldErrors
// (errors.Is(err, ErrInvalid)) naming the file and line.
func ValidatePeerAuthentication(pa *PeerAuthentication) error {
	ps := &problems{p: pa, kind: ErrInvalid}
	validateNames(pa.Namespace, pa.Name, ps)
	validateSelector(pa.Selector, ps)
	if pa.PortLevel != nil && !pa.workloadLevel() {
		ps.add("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS: add a selector, or set spec.mtls")
	}
	if pa.PortLevel != nil && len(pa.PortLevel) == 0 {
		ps.add("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")
	}
	for port := range pa.PortLevel {
		if port == 0 || port > 65535 {
			ps.add(fmt.Sprintf("spec.portLevelMtls.%d", port), "port must be in range 1..65535")
		}
	}
	return ps.err()
}
