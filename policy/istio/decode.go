package istio

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	apiv1beta1 "istio.io/api/security/v1beta1"
	clientv1 "istio.io/client-go/pkg/apis/security/v1"
	clientv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
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
// are skipped with a note; so are PeerAuthentications and
// RequestAuthentications, which DecodeAll reads too. source names the stream in messages ("-" for standard input).
// The policies are converted but not validated: Translate (or Validate)
// does that. On error the policies decoded so far are returned with every
// problem found, each naming source:line, the document's index and the
// field.
func Decode(r io.Reader, source string) ([]*Policy, []Note, error) {
	res, notes, err := DecodeAll(r, source)
	for _, pa := range res.PeerAuthentications {
		notes = append(notes, Note{Pos: pa.Origin, Message: fmt.Sprintf("skipped PeerAuthentication %s: read it with DecodeAll", pa.ID())})
	}
	for _, ra := range res.RequestAuthentications {
		notes = append(notes, Note{Pos: ra.Origin, Message: fmt.Sprintf("skipped RequestAuthentication %s: read it with DecodeAll", ra.ID())})
	}
	return res.AuthorizationPolicies, notes, err
}

// DecodeAll reads every AuthorizationPolicy, PeerAuthentication and
// RequestAuthentication (security.istio.io/v1 or v1beta1, alone or in a
// List) from a
// multi-document YAML or JSON stream, as Decode does. The result is never
// nil.
func DecodeAll(r io.Reader, source string) (*Resources, []Note, error) {
	s := readStream(r, source, 0)
	decodeStreams([]*stream{s}, true)
	return s.result()
}

// stream is one file (or standard input) of documents to decode.
type stream struct {
	source  string
	err     error // reading it failed
	docs    []document
	decoded []*decoder // of each document
}

// readStream reads r, of about size bytes if known, and splits it into
// documents.
func readStream(r io.Reader, source string, size int) *stream {
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := buf.ReadFrom(r); err != nil {
		return &stream{source: source, err: fmt.Errorf("%w: read %s: %w", ErrDecode, source, err)}
	}
	return &stream{source: source, docs: splitDocuments(buf.Bytes())}
}

// decodeStreams decodes every document of every stream, on every
// processor: documents are independent, and each one's results stay
// apart until result merges them in order. fast takes the one-parse path
// where it reads the document as the slow path would (jsonValue).
func decodeStreams(streams []*stream, fast bool) {
	type job struct{ stream, doc int }
	var jobs []job
	for i, s := range streams {
		s.decoded = make([]*decoder, len(s.docs))
		for j := range s.docs {
			jobs = append(jobs, job{i, j})
		}
	}
	forEach(len(jobs), func(k int) {
		s := streams[jobs[k].stream]
		d := &decoder{source: s.source, slow: !fast}
		d.document(s.docs[jobs[k].doc])
		s.decoded[jobs[k].doc] = d
	})
}

// result is what the stream's documents hold, in their order, with every
// problem found, in the order of their lines.
func (s *stream) result() (*Resources, []Note, error) {
	if s.err != nil {
		return &Resources{}, nil, s.err
	}
	all := &decoder{}
	for _, d := range s.decoded {
		all.resources.AuthorizationPolicies = append(all.resources.AuthorizationPolicies, d.resources.AuthorizationPolicies...)
		all.resources.PeerAuthentications = append(all.resources.PeerAuthentications, d.resources.PeerAuthentications...)
		all.resources.RequestAuthentications = append(all.resources.RequestAuthentications, d.resources.RequestAuthentications...)
		all.notes = append(all.notes, d.notes...)
		all.problems.errs = append(all.problems.errs, d.problems.errs...)
	}
	return &all.resources, all.notes, all.problems.err()
}

// decoder accumulates the results of one document.
type decoder struct {
	source    string
	slow      bool // never the fast path: what tests compare it with
	resources Resources
	notes     []Note
	problems  problems
}

// document is one YAML document of the stream.
type document struct {
	index int    // 0-based position in the stream
	line  int    // line of its first line in the stream
	text  []byte // without the separator
}

// splitDocuments splits a stream at "---" lines, as kubectl's YAML reader
// does, remembering where each document starts. Each document's text is
// its lines, each ended by a newline: a part of data where data has the
// newlines.
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{line: 1}
	start := 0 // of cur's text in data
	line := 0
	for pos := 0; pos < len(data); {
		line++
		l, _, found := bytes.Cut(data[pos:], []byte("\n"))
		next := pos + len(l) + 1
		if isSeparator(l) {
			docs = append(docs, cur)
			cur = document{index: len(docs), line: line + 1}
			start = min(next, len(data))
		} else if found {
			cur.text = data[start:next:next]
		} else {
			cur.text = append(slices.Clip(data[start:pos]), l...)
			cur.text = append(cur.text, '\n')
		}
		pos = next
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

// document decodes one document: parsed once, on the fast path
// (quickValue, or else jsonValue), or as kubectl reads it.
func (d *decoder) document(doc document) {
	if d.slow {
		d.slowDocument(doc)
		return
	}
	obj, line, ok := quickValue(doc.text)
	if ok {
		line += doc.line - 1
	} else if obj, line, ok = treeValue(doc); !ok {
		d.slowDocument(doc)
		return
	}
	if obj == nil {
		return // an empty document
	}
	lines := textLines(doc.text, doc.line, "")
	if isList(obj) {
		lines = mapLines(fieldLines(doc.text, doc.line))
	}
	doc.line = line // past leading comments
	d.object(doc, obj, "", lines)
}

// treeValue reads doc's value from its yaml.v3 node tree, and the line of
// its first field, where jsonValue knows the value.
func treeValue(doc document) (any, int, bool) {
	if bytes.ContainsRune(doc.text, '!') {
		return nil, 0, false // a tag, which yaml.v3's nodes do not always show ("!")
	}
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(doc.text, &root); err != nil {
		return nil, 0, false
	}
	obj, ok := jsonValue(&root)
	if !ok || obj == nil {
		return obj, 0, ok
	}
	return obj, documentLine(&root, doc.line), true
}

// isList says whether obj may be a List, whose items Decode locates.
func isList(obj any) bool {
	m, _ := obj.(map[string]any)
	_, items := m["items"]
	return items
}

// slowDocument decodes a document as kubectl reads it (sigs.k8s.io/yaml,
// YAML 1.1), with its messages.
func (d *decoder) slowDocument(doc document) {
	js, err := yaml.YAMLToJSONStrict(doc.text)
	if err != nil {
		line, msg := yamlErrorLine(err, doc.line)
		d.fail(line, "document %d: %s", doc.index, msg)
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
	doc.line = minLine(lines, doc.line) // past leading comments
	d.object(doc, obj, "", mapLines(lines))
}

// object decodes one Kubernetes object (or a List of them) at path.
func (d *decoder) object(doc document, obj any, path string, lines *lineIndex) {
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
	if (kind != "AuthorizationPolicy" && kind != "PeerAuthentication" && kind != "RequestAuthentication") || group != "security.istio.io" {
		what := strings.TrimSpace(describeKind(apiVersion, kind) + " " + objectName(m))
		d.notes = append(d.notes, Note{Pos: d.pos(line), Message: fmt.Sprintf("document %d: skipped %s: not an AuthorizationPolicy, a PeerAuthentication or a RequestAuthentication", doc.index, what)})
		return
	}
	if version != "v1" && version != "v1beta1" {
		d.fail(line, "document %d: apiVersion %s: expected security.istio.io/v1 or security.istio.io/v1beta1", doc.index, apiVersion)
		return
	}
	if kind == "PeerAuthentication" {
		d.peerAuthentication(doc, m, path, lines)
		return
	}
	if kind == "RequestAuthentication" {
		d.requestAuthentication(doc, m, path, lines)
		return
	}
	d.policy(doc, m, version, path, lines)
}

// policy decodes an AuthorizationPolicy object into the client-go type
// of its version, strictly, then converts it.
func (d *decoder) policy(doc document, m map[string]any, version, path string, lines *lineIndex) {
	at := &Policy{Origin: d.pos(lineOf(lines, path, doc.line)), file: d.source, lines: lines.sub(path)}
	ps := &problems{p: at, kind: ErrDecode}
	meta, spec, err := clientObject(m, version)
	if err != nil {
		ps.add("metadata", "%v", err)
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	if meta.Namespace == "" {
		meta.Namespace = defaultNamespace
		d.notes = append(d.notes, Note{Pos: at.Origin, Message: fmt.Sprintf("document %d: AuthorizationPolicy %s has no metadata.namespace: translated in namespace %q", doc.index, meta.Name, defaultNamespace)})
	}
	at.Namespace, at.Name = meta.Namespace, meta.Name
	if meta.Name == "" {
		ps.add("metadata.name", "required")
	} else if p, err, ok := convertMap(meta, m["spec"], at); ok {
		d.add(p, err)
		return
	}
	decodeSpec(m["spec"], spec, checkSpecShape, ps)
	if len(ps.errs) > 0 {
		d.problems.errs = append(d.problems.errs, ps.sorted()...)
		return
	}
	d.add(convert(meta, spec, at))
}

// add keeps a converted policy, or its error.
func (d *decoder) add(p *Policy, err error) {
	if err != nil {
		d.problems.errs = append(d.problems.errs, err)
		return
	}
	d.resources.AuthorizationPolicies = append(d.resources.AuthorizationPolicies, p)
}

// clientObject decodes the object, but its spec and status, with the
// client-go type of its version; the spec is decoded strictly apart.
func clientObject(m map[string]any, version string) (*metav1.ObjectMeta, *apiv1beta1.AuthorizationPolicy, error) {
	if meta, ok := objectMeta(m); ok {
		return meta, &apiv1beta1.AuthorizationPolicy{}, nil
	}
	raw, _ := json.Marshal(envelope(m))
	if version == "v1" {
		var obj clientv1.AuthorizationPolicy
		err := json.Unmarshal(raw, &obj)
		return &obj.ObjectMeta, &obj.Spec, err
	}
	var obj clientv1beta1.AuthorizationPolicy
	err := json.Unmarshal(raw, &obj)
	return &obj.ObjectMeta, &obj.Spec, err
}

// envelope is the object without its spec and status.
func envelope(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != "spec" && k != "status" {
			out[k] = v
		}
	}
	return out
}

// decodeSpec fills spec from its JSON form, refusing unknown fields (a
// misspelt field would otherwise be dropped, and a DENY rule would deny
// more, or an ALLOW allow more, than written) and values of the wrong
// type, each reported with its path.
// checkKind reports what the kind refuses beyond the shape of its message.
func decodeSpec(raw any, spec proto.Message, checkKind func(any, *problems), ps *problems) {
	if raw == nil {
		return
	}
	if fillMessage(raw, spec.ProtoReflect()) {
		checkKind(raw, ps) // the shape is right: fillMessage checked it
		return
	}
	checkShape(raw, spec.ProtoReflect().Descriptor(), "spec", ps)
	checkKind(raw, ps)
	if len(ps.errs) > 0 {
		return
	}
	js, _ := json.Marshal(raw)
	if err := protojson.Unmarshal(js, spec); err != nil {
		ps.add("spec", "%s", cleanProtoError(err))
	}
}

// checkShape reports, with its path, every key of v that the message md
// does not define and every value of the wrong type; protojson would name
// only the first problem, and without a path.
func checkShape(v any, md protoreflect.MessageDescriptor, path string, ps *problems) {
	m, ok := v.(map[string]any)
	if !ok {
		if v != nil {
			ps.add(path, "expected a mapping")
		}
		return
	}
	for _, key := range slices.Sorted(maps.Keys(m)) {
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByTextName(key)
		}
		at := path + "." + key
		switch {
		case fd == nil:
			ps.add(at, "unknown field (check its spelling against the %s reference)", cmp.Or(ps.reference, "AuthorizationPolicy"))
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			checkMessageMap(m[key], fd, at, ps)
		case fd.IsMap():
			checkStringMap(m[key], at, ps)
		case fd.IsList():
			checkList(m[key], fd, at, ps)
		default:
			checkValue(m[key], fd, at, false, ps)
		}
	}
}

// checkMessageMap checks a map of messages (portLevelMtls) whose keys are
// unsigned integers (ports).
func checkMessageMap(v any, fd protoreflect.FieldDescriptor, path string, ps *problems) {
	m, ok := v.(map[string]any)
	if !ok {
		if v != nil {
			ps.add(path, "expected a mapping")
		}
		return
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if _, err := strconv.ParseUint(k, 10, 32); err != nil {
			ps.add(path+"."+k, "%q is not a port number", k)
			continue
		}
		checkShape(m[k], fd.MapValue().Message(), path+"."+k, ps)
	}
}

func checkStringMap(v any, path string, ps *problems) {
	m, ok := v.(map[string]any)
	if !ok && v != nil {
		ps.add(path, "expected a mapping of strings")
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if _, ok := m[k].(string); !ok {
			ps.add(path+"."+k, "expected a string (quote numbers and booleans)")
		}
	}
}

func checkList(v any, fd protoreflect.FieldDescriptor, path string, ps *problems) {
	items, ok := v.([]any)
	if !ok && v != nil {
		ps.add(path, "expected a list")
		return
	}
	for i, item := range items {
		checkValue(item, fd, fmt.Sprintf("%s[%d]", path, i), true, ps)
	}
}

// checkValue checks one value of field fd; inList says it is a list
// element, where null is refused (null elsewhere means absent).
func checkValue(v any, fd protoreflect.FieldDescriptor, path string, inList bool, ps *problems) {
	if v == nil {
		switch {
		case inList && fd.Name() == "rules":
			ps.add(path, "null rule: write {} for a rule that matches everything")
		case inList:
			ps.add(path, "must not be null")
		}
		return
	}
	switch fd.Kind() {
	case protoreflect.MessageKind:
		checkShape(v, fd.Message(), path, ps)
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			ps.add(path, "expected a string (quote numbers and booleans)")
		}
	case protoreflect.EnumKind:
		name, _ := v.(string)
		if fd.Enum().Values().ByName(protoreflect.Name(name)) == nil {
			ps.add(path, "%v is not one of %s", jsonText(v), enumNames(fd.Enum()))
		}
	}
}

func enumNames(ed protoreflect.EnumDescriptor) string {
	var names []string
	for i := range ed.Values().Len() {
		names = append(names, string(ed.Values().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
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

var protoErrorPosition = regexp.MustCompile(`^proto:\s*|\s*\(line \d+:\d+\)`)

// cleanProtoError drops protojson's prefix and its position in the JSON
// form of the spec, which the user never saw.
func cleanProtoError(err error) string {
	return protoErrorPosition.ReplaceAllString(err.Error(), "")
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

// yamlErrorLine turns a YAML error, whose line counts from the document's
// start, into the stream's line and the message without it.
func yamlErrorLine(err error, firstLine int) (int, string) {
	msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "), "yaml: ")
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return firstLine + n - 1, "YAML: " + m[2]
	}
	return firstLine, "YAML: " + msg
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
