package waypoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	networkingv1 "istio.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/regomesh/regomesh/policy/istio"
)

// RouteResources are the routing resources the waypoint reads: Gateway
// API HTTPRoutes and Istio VirtualServices.
type RouteResources struct {
	HTTPRoutes      []*gwv1.HTTPRoute
	VirtualServices []*VirtualService
}

// ReadRoutes reads every gateway.networking.k8s.io/v1 HTTPRoute and
// networking.istio.io VirtualService (v1, v1beta1 or v1alpha3) from YAML
// or JSON files and directories of them (multi-document streams),
// strictly: an unknown field, or a VirtualService field the waypoint
// does not implement, is an error naming file:line. Other kinds are
// skipped. Every file is read before it fails, so the error lists every
// problem.
func ReadRoutes(paths []string) (RouteResources, error) {
	files, err := istio.ResourceFiles(paths)
	if err != nil {
		return RouteResources{}, err
	}
	var all RouteResources
	var errs []error
	for _, file := range files {
		data, err := readFile(file)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := decodeRoutes(data, file)
		all.HTTPRoutes = append(all.HTTPRoutes, res.HTTPRoutes...)
		all.VirtualServices = append(all.VirtualServices, res.VirtualServices...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return all, errors.Join(errs...)
}

// ReadHTTPRoutes reads the HTTPRoutes of ReadRoutes alone.
func ReadHTTPRoutes(paths []string) ([]*gwv1.HTTPRoute, error) {
	res, err := ReadRoutes(paths)
	return res.HTTPRoutes, err
}

func readFile(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(file)
}

// decodeRoutes reads one stream, document by document.
func decodeRoutes(data []byte, source string) (RouteResources, error) {
	var res RouteResources
	var errs []error
	for i, doc := range splitYAML(data) {
		js, err := yaml.YAMLToJSONStrict(doc.text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: document %d: %w", source, doc.line, i, err))
			continue
		}
		var head struct{ APIVersion, Kind string }
		if json.Unmarshal(js, &head) != nil {
			continue // not an object: not a route
		}
		group, version, _ := strings.Cut(head.APIVersion, "/")
		switch {
		case head.Kind == "HTTPRoute" && head.APIVersion == "gateway.networking.k8s.io/v1":
			hr, err := decodeHTTPRoute(js)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: document %d: HTTPRoute: %w", source, doc.line, i, err))
				continue
			}
			res.HTTPRoutes = append(res.HTTPRoutes, hr)
		case head.Kind == "VirtualService" && group == "networking.istio.io" && slices.Contains([]string{"v1", "v1beta1", "v1alpha3"}, version):
			vs, err := decodeVirtualService(js, doc, source)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			res.VirtualServices = append(res.VirtualServices, vs)
		}
	}
	return res, errors.Join(errs...)
}

func decodeHTTPRoute(js []byte) (*gwv1.HTTPRoute, error) {
	d := json.NewDecoder(bytes.NewReader(js))
	d.DisallowUnknownFields()
	hr := &gwv1.HTTPRoute{}
	if err := d.Decode(hr); err != nil {
		return nil, err
	}
	if hr.Namespace == "" {
		hr.Namespace = "default"
	}
	return hr, nil
}

// decodeVirtualService reads one VirtualService: its metadata, then its
// spec field by field against what the waypoint implements (each
// problem at its line), then the typed spec strictly.
func decodeVirtualService(js []byte, doc yamlDoc, source string) (*VirtualService, error) {
	var obj struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     json.RawMessage   `json:"spec"`
	}
	vs := &VirtualService{file: source, line: doc.line, lines: fieldLines(doc.text, doc.line)}
	if err := json.Unmarshal(js, &obj); err != nil {
		return nil, fmt.Errorf("%s:%d: VirtualService: %w", source, doc.line, err)
	}
	vs.Namespace, vs.Name, vs.Created = cmpOr(obj.Metadata.Namespace, "default"), obj.Metadata.Name, obj.Metadata.CreationTimestamp.Time
	if vs.Name == "" {
		return nil, vs.fail("metadata.name", "required")
	}
	var spec any
	if len(obj.Spec) > 0 {
		_ = json.Unmarshal(obj.Spec, &spec)
	}
	var errs []error
	checkVSFields(vs, spec, (&networkingv1.VirtualService{}).ProtoReflect().Descriptor(), "spec", "spec", &errs)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	vs.Spec = &networkingv1.VirtualService{}
	if spec != nil {
		js, _ := json.Marshal(spec) // with durations in protobuf's form
		if err := protojson.Unmarshal(js, vs.Spec); err != nil {
			return nil, vs.fail("spec", "%v", err)
		}
	}
	return vs, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// vsSupported are the VirtualService fields the waypoint implements, as
// paths with [] for list items and {} for map values. Any other field
// refuses the whole set: serving a rule without a feature it asks for
// would send requests where its author did not mean.
var vsSupported = map[string]bool{}

func init() {
	for _, p := range []string{
		"hosts", "gateways", "http", "http[].name", "http[].match", "http[].match[].name",
		"http[].match[].port", "http[].match[].ignoreUriCase",
		"http[].route", "http[].route[].destination", "http[].route[].destination.host",
		"http[].route[].destination.port", "http[].route[].destination.port.number", "http[].route[].weight",
		"http[].timeout",
		"http[].retries", "http[].retries.attempts", "http[].retries.perTryTimeout", "http[].retries.retryOn",
		"http[].retries.retryIgnorePreviousHosts", "http[].retries.backoff",
		"http[].fault", "http[].fault.delay", "http[].fault.delay.fixedDelay", "http[].fault.delay.percentage",
		"http[].fault.delay.percentage.value", "http[].fault.abort", "http[].fault.abort.httpStatus",
		"http[].fault.abort.percentage", "http[].fault.abort.percentage.value",
	} {
		vsSupported["spec."+p] = true
	}
	for _, m := range []string{"uri", "method", "headers{}", "withoutHeaders{}", "queryParams{}"} {
		base := "spec.http[].match[]." + strings.TrimSuffix(m, "{}")
		vsSupported[base] = true
		for _, kind := range []string{"exact", "prefix", "regex"} {
			if m == "queryParams{}" && kind == "prefix" {
				continue // Istio: not supported for query parameters
			}
			vsSupported["spec.http[].match[]."+m+"."+kind] = true
		}
	}
}

// vsHints say why a field the waypoint refuses is refused, or what to
// write instead.
var vsHints = map[string]string{
	"spec.http[].route[].destination.subset": "subsets need DestinationRules, which the waypoint does not read: route to a Service per version",
	"spec.http[].match[].sourceLabels":       "Istio's waypoints do not match source labels either",
	"spec.http[].fault.delay.percent":        "deprecated: use percentage",
	"spec.http[].fault.abort.grpcStatus":     "use httpStatus",
	"spec.tcp":                               "the waypoint routes HTTP only",
	"spec.tls":                               "the waypoint routes HTTP only",
}

// checkVSFields walks a spec's JSON form beside its message descriptor:
// a key the message does not define is unknown (a typo), one it defines
// but vsSupported does not list is not implemented; each is reported at
// its line.
func checkVSFields(vs *VirtualService, v any, md protoreflect.MessageDescriptor, path, pattern string, errs *[]error) {
	m, ok := v.(map[string]any)
	if !ok {
		return // a value of the wrong shape: protojson reports it
	}
	for _, key := range slices.Sorted(maps.Keys(m)) {
		p := path + "." + key
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		if fd == nil {
			*errs = append(*errs, vs.fail(p, "unknown field"))
			continue
		}
		pat := pattern + "." + fd.JSONName()
		if !vsSupported[pat] {
			msg := "not supported by the waypoint (docs/waypoint.md#routing-virtualservice)"
			if hint := vsHints[pat]; hint != "" {
				msg += ": " + hint
			}
			*errs = append(*errs, vs.fail(p, "%s", msg))
			continue
		}
		switch val := m[key]; {
		case fd.IsMap() && fd.MapValue().Message() != nil:
			items, _ := val.(map[string]any)
			for _, k := range slices.Sorted(maps.Keys(items)) {
				checkVSFields(vs, items[k], fd.MapValue().Message(), p+"."+k, pat+"{}", errs)
			}
		case fd.IsList() && fd.Message() != nil:
			items, _ := val.([]any)
			for i, item := range items {
				checkVSFields(vs, item, fd.Message(), fmt.Sprintf("%s[%d]", p, i), pat+"[]", errs)
			}
		case fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Duration":
			if s, ok := val.(string); ok {
				if d, err := time.ParseDuration(s); err == nil {
					m[key] = strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s" // Istio's 1h/1m/1s/1ms, as protobuf writes it
				}
			}
		case fd.Message() != nil && !strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf."):
			checkVSFields(vs, val, fd.Message(), p, pat, errs)
		}
	}
}

// yamlDoc is one document of a stream and the line it starts on.
type yamlDoc struct {
	line int
	text []byte
}

// splitYAML splits a stream at "---" lines, as kubectl's reader does,
// remembering where each document starts; empty documents are dropped.
func splitYAML(data []byte) []yamlDoc {
	var docs []yamlDoc
	cur := yamlDoc{line: 1}
	flush := func() {
		if len(bytes.TrimSpace(cur.text)) > 0 {
			docs = append(docs, cur)
		}
	}
	line := 0
	for rest := data; len(rest) > 0; {
		line++
		l, tail, _ := bytes.Cut(rest, []byte("\n"))
		rest = tail
		if t := bytes.TrimRight(l, "\r \t"); bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			flush()
			cur = yamlDoc{line: line + 1}
			continue
		}
		cur.text = append(append(cur.text, l...), '\n')
	}
	flush()
	return docs
}

// fieldLines maps every field path of a YAML document ("spec.http[0]",
// "spec.http[0].match[0].headers.x-env") to its line in the stream;
// on a parse problem it is empty, and messages fall back to the
// document's line.
func fieldLines(text []byte, firstLine int) map[string]int {
	var root yamlv3.Node
	lines := map[string]int{}
	if err := yamlv3.Unmarshal(text, &root); err != nil || len(root.Content) == 0 {
		return lines
	}
	var walk func(n *yamlv3.Node, path string)
	walk = func(n *yamlv3.Node, path string) {
		switch n.Kind {
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key := n.Content[i].Value
				if path != "" {
					key = path + "." + key
				}
				lines[key] = n.Content[i].Line + firstLine - 1
				walk(n.Content[i+1], key)
			}
		case yamlv3.SequenceNode:
			for i, item := range n.Content {
				key := fmt.Sprintf("%s[%d]", path, i)
				lines[key] = item.Line + firstLine - 1
				walk(item, key)
			}
		}
	}
	walk(root.Content[0], "")
	return lines
}
