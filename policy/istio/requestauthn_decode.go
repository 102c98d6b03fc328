package istio

import (
	"encoding/json"
	"fmt"

	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
)

// requestAuthentication decodes a RequestAuthentication object (v1 and
// v1beta1 share the spec) strictly, then converts it.
func (d *decoder) requestAuthentication(doc document, m map[string]any, path string, lines *lineIndex) {
	at := &RequestAuthentication{Origin: d.pos(lineOf(lines, path, doc.line)), file: d.source, lines: lines.sub(path)}
	ps := &problems{p: at, kind: ErrDecode, reference: "RequestAuthentication"}
	var obj clientv1.RequestAuthentication
	raw, _ := json.Marshal(envelope(m))
	if err := json.Unmarshal(raw, &obj); err != nil {
		ps.add("metadata", "%v", err)
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	meta := &obj.ObjectMeta
	if meta.Namespace == "" {
		meta.Namespace = defaultNamespace
		d.notes = append(d.notes, Note{Pos: at.Origin, Message: fmt.Sprintf("document %d: RequestAuthentication %s has no metadata.namespace: read in namespace %q", doc.index, meta.Name, defaultNamespace)})
	}
	at.Namespace, at.Name = meta.Namespace, meta.Name
	if meta.Name == "" {
		ps.add("metadata.name", "required")
	}
	spec := &apiv1beta1.RequestAuthentication{}
	decodeSpec(m["spec"], spec, func(any, *problems) {}, ps)
	if len(ps.errs) > 0 {
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	d.resources.RequestAuthentications = append(d.resources.RequestAuthentications, convertRequestAuthn(meta, spec, at))
}
