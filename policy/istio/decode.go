package istio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	clientv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Note is something Decode skipped or assumed that the user should know.
type Note struct {
	Pos     string // "policies.yaml:30"
	Message string
}

func (n Note) String() string { return n.Pos + ": " + n.Message }

// defaultNamespace is the namespace of a policy whose metadata names none,
// as `kubectl apply` without -n would create it.
const defaultNamespace = "default"

// Decode reads every AuthorizationPolicy (security.istio.io/v1 or v1beta1,
// alone or in a List) from a multi-document YAML or JSON stream. Other kinds
// are skipped with a note. source names the stream in messages ("-" for
// standard input). The policies are converted but not validated: Translate
// (or Validate) does that. On error the policies decoded so far are
// returned with every problem found, each naming source:line, the
// document's index and the field.
func Decode(r io.Reader, source string) ([]*Policy, []Note, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: read %s: %w", ErrDecode, source, err)
	}
	d := &decoder{source: source}
	for _, doc := range splitDocuments(data) {
		d.document(doc)
	}
	return d.policies, d.notes, d.problems.err()
}

// decoder accumulates the results of one Decode.
type decoder struct {
	source   string
	policies []*Policy
	notes    []Note
	problems problems
}

// document is one YAML document of the stream.
type document struct {
	index int    // 0-based position in the stream
	line  int    // line of its first line in the stream
	text  []byte // without the separator
}

// splitDocuments splits a stream at "---" lines, as kubectl's YAML reader
// does, remembering where each document starts.
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{line: 1}
	line := 0
	for rest := data; len(rest) > 0; {
		line++
		l, tail, _ := bytes.Cut(rest, []byte("\n"))
		rest = tail
		if isSeparator(l) {
			docs = append(docs, cur)
			cur = document{index: len(docs), line: line + 1}
			continue
		}
		cur.text = append(append(cur.text, l...), '\n')
	}
	return append(docs, cur)
}

func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r"), []byte("---"))
	rest = bytes.TrimSpace(rest)
	return ok && (len(rest) == 0 || rest[0] == '#')
}

func (d *decoder) pos(line int) string { return fmt.Sprintf("%s:%d", d.source, line) }

func (d *decoder) fail(line int, format string, args ...any) {
	d.problems.errs = append(d.problems.errs, &FieldError{Pos: d.pos(line), Problem: fmt.Sprintf(format, args...), kind: ErrDecode})
}

func (d *decoder) document(doc document) {
	js, err := yaml.YAMLToJSONStrict(doc.text)
	if err != nil {
		d.fail(doc.line, "document %d: %s", doc.index, cleanYAMLError(err))
		return
	}
	var obj any
	if err := json.Unmarshal(js, &obj); err != nil {
		d.fail(doc.line, "document %d: %v", doc.index, err)
		return
	}
	if obj == nil {
		return // an empty document
	}
	lines := fieldLines(doc.text, doc.line)
	d.object(doc, obj, "", lines)
}

// object decodes one Kubernetes object (or a List of them) at path.
func (d *decoder) object(doc document, obj any, path string, lines map[string]int) {
	m, ok := obj.(map[string]any)
	line := lineOf(lines, path, doc.line)
	if !ok {
		d.fail(line, "document %d: %s: expected a Kubernetes object (a mapping with apiVersion and kind)", doc.index, orDocument(path))
		return
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	if items, isList := m["items"].([]any); isList && strings.HasSuffix(kind, "List") {
		for i, item := range items {
			d.object(doc, item, fmt.Sprintf("%sitems[%d].", path, i), lines)
		}
		return
	}
	group, version, _ := strings.Cut(apiVersion, "/")
	if kind != "AuthorizationPolicy" || group != "security.istio.io" {
		d.notes = append(d.notes, Note{Pos: d.pos(line), Message: fmt.Sprintf("document %d: skipped %s %s: not an AuthorizationPolicy", doc.index, describeKind(apiVersion, kind), objectName(m))})
		return
	}
	if version != "v1" && version != "v1beta1" {
		d.fail(line, "document %d: apiVersion %s: expected security.istio.io/v1 or security.istio.io/v1beta1", doc.index, apiVersion)
		return
	}
	d.policy(doc, m, version, path, lines)
}

// policy decodes an AuthorizationPolicy object into the client-go type
// of its version, strictly, then converts it.
func (d *decoder) policy(doc document, m map[string]any, version, path string, lines map[string]int) {
	at := &Policy{Origin: d.pos(lineOf(lines, path, doc.line)), file: d.source, lines: subLines(lines, path)}
	ps := &problems{p: at, kind: ErrDecode}
	meta, spec, ok := decodeClientObject(m, version, ps)
	if ok {
		at.Namespace, at.Name = meta.Namespace, meta.Name
		ps.p = at
		checkSpecShape(m["spec"], ps)
	}
	if !ok || len(ps.errs) > 0 {
		d.problems.errs = append(d.problems.errs, ps.errs...)
		return
	}
	if meta.Namespace == "" {
		meta.Namespace = defaultNamespace
		d.notes = append(d.notes, Note{Pos: at.Origin, Message: fmt.Sprintf("document %d: AuthorizationPolicy %s has no metadata.namespace: translated in namespace %q", doc.index, meta.Name, defaultNamespace)})
	}
	p, err := convert(meta, spec, at)
	if err != nil {
		d.problems.errs = append(d.problems.errs, err)
		return
	}
	d.policies = append(d.policies, p)
}

// decodeClientObject decodes metadata with the client-go type and the
// spec with protojson, refusing unknown fields (a misspelt field would
// otherwise be dropped, and a DENY rule would deny more, or an ALLOW allow
// more, than written).
func decodeClientObject(m map[string]any, version string, ps *problems) (*metav1.ObjectMeta, *apiv1beta1.AuthorizationPolicy, bool) {
	envelope := make(map[string]any, len(m))
	for k, v := range m {
		if k != "spec" && k != "status" {
			envelope[k] = v
		}
	}
	raw, _ := json.Marshal(envelope)
	var meta *metav1.ObjectMeta
	var spec *apiv1beta1.AuthorizationPolicy
	var err error
	switch version {
	case "v1":
		var obj clientv1.AuthorizationPolicy
		err = json.Unmarshal(raw, &obj)
		meta, spec = &obj.ObjectMeta, &obj.Spec
	default:
		var obj clientv1beta1.AuthorizationPolicy
		err = json.Unmarshal(raw, &obj)
		meta, spec = &obj.ObjectMeta, &obj.Spec
	}
	if err != nil {
		ps.add("metadata", "%v", err)
		return nil, nil, false
	}
	ps.p.Namespace, ps.p.Name = meta.Namespace, meta.Name
	if meta.Name == "" {
		ps.add("metadata.name", "required")
	}
	rawSpec, hasSpec := m["spec"]
	if !hasSpec || rawSpec == nil {
		return meta, spec, len(ps.errs) == 0
	}
	checkUnknownFields(rawSpec, spec.ProtoReflect().Descriptor(), "spec", ps)
	if len(ps.errs) > 0 {
		return nil, nil, false
	}
	specJSON, _ := json.Marshal(rawSpec)
	if err := protojson.Unmarshal(specJSON, spec); err != nil {
		ps.add("spec", "%s", cleanProtoError(err))
		return nil, nil, false
	}
	return meta, spec, true
}

// checkUnknownFields reports every key of v that the message md does not
// define, with its path; protojson would only name the first, without one.
func checkUnknownFields(v any, md protoreflect.MessageDescriptor, path string, ps *problems) {
	m, ok := v.(map[string]any)
	if !ok {
		return // protojson reports the type error
	}
	for key, val := range m {
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByTextName(key)
		}
		if fd == nil {
			ps.add(path+"."+key, "unknown field (check its spelling against the AuthorizationPolicy reference)")
			continue
		}
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			continue
		}
		if !fd.IsList() {
			checkUnknownFields(val, fd.Message(), path+"."+key, ps)
			continue
		}
		items, _ := val.([]any)
		for i, item := range items {
			checkUnknownFields(item, fd.Message(), fmt.Sprintf("%s.%s[%d]", path, key, i), ps)
		}
	}
}

// checkSpecShape reports what the protobuf form cannot tell apart from an
// absent field: `from: []` and `to: []`, which Istio refuses.
func checkSpecShape(spec any, ps *problems) {
	s, _ := spec.(map[string]any)
	rules, _ := s["rules"].([]any)
	for i, r := range rules {
		rule, _ := r.(map[string]any)
		for _, key := range []string{"from", "to"} {
			if list, ok := rule[key].([]any); ok && len(list) == 0 {
				ps.add(fmt.Sprintf("spec.rules[%d].%s", i, key), "must not be empty: remove it to match any %s", map[string]string{"from": "source", "to": "operation"}[key])
			}
		}
	}
}

var protoErrorPosition = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

// cleanProtoError drops protojson's prefix and its position in the JSON
// form of the spec, which the user never saw.
func cleanProtoError(err error) string {
	return protoErrorPosition.ReplaceAllString(err.Error(), "")
}

func cleanYAMLError(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "), "yaml: ")
}

func describeKind(apiVersion, kind string) string {
	switch {
	case kind == "" && apiVersion == "":
		return "an object without apiVersion and kind"
	case apiVersion == "":
		return kind
	}
	return kind + " (" + apiVersion + ")"
}

func objectName(m map[string]any) string {
	meta, _ := m["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if ns, _ := meta["namespace"].(string); ns != "" {
		return ns + "/" + name
	}
	return name
}

func orDocument(path string) string {
	if path == "" {
		return "the document"
	}
	return strings.TrimSuffix(path, ".")
}
