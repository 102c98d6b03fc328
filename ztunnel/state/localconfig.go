package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LocalConfig is the form of --local-config, YAML or JSON; Decode
// validates and converts it. Test beds and tools write it with a YAML or
// JSON encoder.
type LocalConfig struct {
	Workloads []LocalWorkload `yaml:"workloads" json:"workloads"`
	Services  []LocalService  `yaml:"services,omitempty" json:"services,omitempty"`
}

// LocalWorkload is one workloads[] entry. Name, namespace and at least one
// IP are required; uid defaults to namespace/name, serviceAccount to
// "default", protocol to HBONE.
type LocalWorkload struct {
	UID            string            `yaml:"uid,omitempty" json:"uid,omitempty"`
	Name           string            `yaml:"name" json:"name"`
	Namespace      string            `yaml:"namespace" json:"namespace"`
	ServiceAccount string            `yaml:"serviceAccount,omitempty" json:"serviceAccount,omitempty"`
	IPs            []string          `yaml:"ips" json:"ips"`
	Node           string            `yaml:"node,omitempty" json:"node,omitempty"`
	Labels         map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Protocol       Protocol          `yaml:"protocol,omitempty" json:"protocol,omitempty"`
	Waypoint       string            `yaml:"waypoint,omitempty" json:"waypoint,omitempty"`
}

// LocalService is one services[] entry. Name and namespace are required;
// hostname defaults to <name>.<namespace>.svc.<cluster domain>, a port's
// targetPort to its port.
type LocalService struct {
	Name      string            `yaml:"name" json:"name"`
	Namespace string            `yaml:"namespace" json:"namespace"`
	Hostname  string            `yaml:"hostname,omitempty" json:"hostname,omitempty"`
	VIPs      []string          `yaml:"vips,omitempty" json:"vips,omitempty"`
	Ports     []ServicePort     `yaml:"ports,omitempty" json:"ports,omitempty"`
	Selector  map[string]string `yaml:"selector,omitempty" json:"selector,omitempty"`
	Waypoint  string            `yaml:"waypoint,omitempty" json:"waypoint,omitempty"`
}

// Options fill what a local config leaves out.
type Options struct {
	// TrustDomain of workload identities; default "cluster.local".
	TrustDomain string
	// ClusterDomain for service hostnames; default "cluster.local".
	ClusterDomain string
}

func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	return o
}

// LoadFile reads and validates a local-config file.
func LoadFile(path string, opts Options) (*Snapshot, error) {
	s, _, err := ReadFile(path, opts)
	return s, err
}

// ReadFile is LoadFile that also returns the content it read, for Watch.
func ReadFile(path string, opts Options) (*Snapshot, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("state: %w", err)
	}
	s, err := Decode(data, opts)
	var at *entryError
	if errors.As(err, &at) {
		at.file = path
		return nil, nil, at
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, data, nil
}

// Decode parses a local config strictly (unknown fields are errors) and
// validates it; messages name the field, e.g. "workloads[2].ips[0]". It
// reads YAML, or JSON when the data is a JSON object: the same fields,
// decoded without YAML's node tree, which for 10,000 workloads is most of
// a load's memory (BenchmarkDecode). Unlike YAML, JSON (encoding/json)
// takes a key twice (the last wins) and matches field names regardless
// of case; a misspelt field is refused by both.
func Decode(data []byte, opts Options) (*Snapshot, error) {
	opts = opts.withDefaults()
	var lc LocalConfig
	var err error
	if isJSONObject(data) {
		err = decodeJSON(data, &lc)
	} else {
		err = decodeYAML(data, &lc)
	}
	if err != nil {
		return nil, fmt.Errorf("state: local config: %w", err)
	}
	workloads := make([]*Workload, 0, len(lc.Workloads))
	for i, lw := range lc.Workloads {
		w, err := lw.convert(opts)
		if err != nil {
			return nil, newEntryError(data, "workloads", i, err)
		}
		workloads = append(workloads, w)
	}
	services := make([]*Service, 0, len(lc.Services))
	for i, ls := range lc.Services {
		svc, err := ls.convert(opts)
		if err != nil {
			return nil, newEntryError(data, "services", i, err)
		}
		services = append(services, svc)
	}
	return NewSnapshot(workloads, services)
}

func decodeYAML(data []byte, lc *LocalConfig) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelt field is an error, not a silent default
	if err := dec.Decode(lc); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// isJSONObject reports whether data is one valid JSON object. YAML's flow
// style can start with "{" too ({workloads: [...]}): that is not JSON and
// stays YAML's.
func isJSONObject(data []byte) bool {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{' && json.Valid(data)
}

// decodeJSON decodes one JSON object, unknown fields refused; errors say
// where (line and column, or the field).
func decodeJSON(data []byte, lc *LocalConfig) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(lc)
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		line, col := position(data, typeErr.Offset-1) // the value's last byte
		return fmt.Errorf("line %d column %d: %s is %s, want %s", line, col, typeErr.Field, typeErr.Value, typeErr.Type)
	}
	return err // valid JSON (isJSONObject): no syntax error, one value
}

// position is the line and column (from 1) of the byte at offset.
func position(data []byte, offset int64) (line, col int) {
	before := data[:min(max(offset, 0), int64(len(data)))]
	line = bytes.Count(before, []byte("\n")) + 1
	return line, len(before) - bytes.LastIndexByte(before, '\n')
}

// fieldError is a validation error whose text starts with the field path
// below the list item ("".name: required).
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return "." + e.field + ": " + e.msg }

// entryError is a workloads[] or services[] entry that does not validate,
// at a line of the file: "FILE:LINE: state: local config: workloads[2].ips[0]: ...".
type entryError struct {
	file  string // set by ReadFile
	line  int    // 0 when unknown
	list  string // workloads or services
	index int
	err   error // a *fieldError
}

func newEntryError(data []byte, list string, index int, err error) *entryError {
	e := &entryError{list: list, index: index, err: err}
	path := []any{list, index}
	var fe *fieldError
	if errors.As(err, &fe) {
		path = append(path, fieldPath(fe.field)...)
	}
	e.line = lineOf(data, path)
	return e
}

func (e *entryError) Error() string {
	var b strings.Builder
	switch {
	case e.file != "" && e.line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.file, e.line)
	case e.file != "":
		b.WriteString(e.file + ": ")
	}
	b.WriteString("state: local config: ")
	if e.file == "" && e.line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.line)
	}
	fmt.Fprintf(&b, "%s[%d]%v", e.list, e.index, e.err)
	return b.String()
}

func (e *entryError) Unwrap() error { return e.err }

// fieldPath splits a field error's path ("ips[0]") into mapping keys and
// sequence indexes.
func fieldPath(field string) []any {
	var path []any
	for part := range strings.SplitSeq(field, ".") {
		name, index, ok := strings.Cut(part, "[")
		path = append(path, name)
		if i, err := strconv.Atoi(strings.TrimSuffix(index, "]")); ok && err == nil {
			path = append(path, i)
		}
	}
	return path
}

// lineOf is the line of the node at path (mapping keys and sequence
// indexes) in a YAML or JSON document, or of the deepest node on the way
// that exists; 0 when the document does not parse. Only errors pay for it.
func lineOf(data []byte, path []any) int {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return 0
	}
	n := doc.Content[0]
	for _, step := range path {
		next := child(n, step)
		if next == nil {
			break
		}
		n = next
	}
	return n.Line
}

// child is the value under key (a string, in a mapping) or index (an int,
// in a sequence) of n; nil when there is none.
func child(n *yaml.Node, step any) *yaml.Node {
	switch s := step.(type) {
	case string:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == s {
				return n.Content[i+1]
			}
		}
	case int:
		if n.Kind == yaml.SequenceNode && s >= 0 && s < len(n.Content) {
			return n.Content[s]
		}
	}
	return nil
}

func (lw LocalWorkload) convert(opts Options) (*Workload, error) {
	if lw.Name == "" {
		return nil, &fieldError{"name", "required"}
	}
	if lw.Namespace == "" {
		return nil, &fieldError{"namespace", "required"}
	}
	w := &Workload{
		UID: lw.UID, Name: lw.Name, Namespace: lw.Namespace, ServiceAccount: lw.ServiceAccount,
		Node: lw.Node, Labels: lw.Labels, Protocol: lw.Protocol, Waypoint: lw.Waypoint, TrustDomain: opts.TrustDomain,
	}
	if w.UID == "" {
		w.UID = w.Namespace + "/" + w.Name
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	switch w.Protocol {
	case "":
		w.Protocol = HBONE
	case HBONE, None:
	default:
		return nil, &fieldError{"protocol", fmt.Sprintf("%q is not HBONE or NONE", lw.Protocol)}
	}
	ips, err := parseIPs("ips", lw.IPs)
	if err != nil {
		return nil, err
	}
	if err := checkRoutable("ips", ips, "a workload IP must be the pod's own routable address"); err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &fieldError{"ips", "at least one IP is required"}
	}
	w.IPs = ips
	return w, checkRef("waypoint", lw.Waypoint)
}

func (ls LocalService) convert(opts Options) (*Service, error) {
	if ls.Name == "" {
		return nil, &fieldError{"name", "required"}
	}
	if ls.Namespace == "" {
		return nil, &fieldError{"namespace", "required"}
	}
	svc := &Service{Name: ls.Name, Namespace: ls.Namespace, Hostname: ls.Hostname, Selector: ls.Selector, Waypoint: ls.Waypoint}
	if svc.Hostname == "" {
		svc.Hostname = fmt.Sprintf("%s.%s.svc.%s", ls.Name, ls.Namespace, opts.ClusterDomain)
	}
	vips, err := parseIPs("vips", ls.VIPs)
	if err != nil {
		return nil, err
	}
	if err := checkRoutable("vips", vips, "a service VIP must be a routable cluster address"); err != nil {
		return nil, err
	}
	svc.VIPs = vips
	for i, p := range ls.Ports {
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		if p.Port < 1 || p.Port > 65535 || p.TargetPort < 1 || p.TargetPort > 65535 {
			return nil, &fieldError{fmt.Sprintf("ports[%d]", i), "ports are 1-65535"}
		}
		svc.Ports = append(svc.Ports, p)
	}
	return svc, checkRef("waypoint", ls.Waypoint)
}

func parseIPs(field string, raw []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(raw))
	for i, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, &fieldError{fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q is not an IP address", s)}
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// checkRoutable refuses the addresses NotRoutable names.
func checkRoutable(field string, ips []netip.Addr, want string) error {
	for i, ip := range ips {
		if kind := NotRoutable(ip); kind != "" {
			return &fieldError{fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%s is %s; %s", ip, kind, want)}
		}
	}
	return nil
}

func checkRef(field, ref string) error {
	if ref == "" {
		return nil
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return &fieldError{field, fmt.Sprintf("%q is not <namespace>/<name>", ref)}
	}
	return nil
}
