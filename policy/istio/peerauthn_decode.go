package istio

import (
	"encoding/json"
	"fmt"

	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
)

// peerAuthentication decodes a PeerAuthentication object (v1 and v1beta1
// share the spec) strictly, then converts it.
func (d *decoder) peerAuthentication(doc document, m map[string]any, path string, lines *lineIndex) {
	at := &PeerAuthentication{Origin: d.pos(lineOf(lines, path, doc.line)), file: d.source, lines: lines.sub(path)}
	ps := &problems{p: at, kind: ErrDecode, reference: "PeerAuthentication"}
	var obj clientv1.PeerAuthentication
	raw, _ := json.Marshal(envelope(m))
	if err := json.Unmarshal(raw, &obj); err != nil {
		ps.add("metadata", "%v", err)
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	meta := &obj.ObjectMeta
	if meta.Namespace == "" {
		meta.Namespace = defaultNamespace
		d.notes = append(d.notes, Note{Pos: at.Origin, Message: fmt.Sprintf("document %d: PeerAuthentication %s has no metadata.namespace: translated in namespace %q", doc.index, meta.Name, defaultNamespace)})
	}
	at.Namespace, at.Name = meta.Namespace, meta.Name
	if meta.Name == "" {
		ps.add("metadata.name", "required")
	}
	spec := &apiv1beta1.PeerAuthentication{}
	decodeSpec(m["spec"], spec, checkPeerShape, ps)
	if len(ps.errs) > 0 {
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	d.resources.PeerAuthentications = append(d.resources.PeerAuthentications, convertPeer(meta, spec, at))
}

// checkPeerShape reports `portLevelMtls: {}`, which Istio refuses and the
// protobuf form cannot tell apart from an absent field.
func checkPeerShape(spec any, ps *problems) {
	s, _ := spec.(map[string]any)
	if ports, ok := s["portLevelMtls"].(map[string]any); ok && len(ports) == 0 {
		ps.add("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")
	}
}
