package policy

import (
	"encoding/json"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// kind orders value types as Rego does (ast.Compare): null < boolean <
// number < string < composite.
type kind uint8

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindComposite
)

// value is an input value seen by the native program, without the cost of
// an ast.Value. Composite values keep the Go form of the JSON document
// (map[string]any, []any, []string, map[string]string).
type value struct {
	kind kind
	b    bool
	n    float64
	s    string
	c    any
}

func stringValue(s string) value { return value{kind: kindString, s: s} }
func numberValue(n int) value    { return value{kind: kindNumber, n: float64(n)} }

// getter reads one field of the input document as its JSON form would hold
// it: ok is false exactly when the JSON document has no such field.
type getter func(in *Input) (value, bool)

// field is an input reference the native program reads.
type field struct {
	path string // "input.source.namespace", for messages and cache keys
	get  getter
}

// fieldFor resolves a ground input reference ("input.destination.labels.app")
// to a getter. Unknown paths are valid and never defined, as the strict
// input decoder admits no other fields.
func fieldFor(ref ast.Ref) (*field, bool) {
	path, ok := refStrings(ref)
	if !ok || len(path) == 0 || path[0] != "input" {
		return nil, false
	}
	return &field{path: strings.Join(path, "."), get: getterFor(path[1:])}, true
}

// refStrings returns the keys of a ref whose every term is a string (the
// head var "input" included), or false.
func refStrings(ref ast.Ref) ([]string, bool) {
	out := make([]string, 0, len(ref))
	for i, t := range ref {
		switch v := t.Value.(type) {
		case ast.Var:
			if i != 0 {
				return nil, false
			}
			out = append(out, string(v))
		case ast.String:
			out = append(out, string(v))
		default:
			return nil, false
		}
	}
	return out, true
}

func getterFor(path []string) getter {
	if len(path) == 0 {
		return func(in *Input) (value, bool) { return value{kind: kindComposite, c: in}, true }
	}
	switch path[0] {
	case "layer":
		return leafOnly(path, func(in *Input) (value, bool) { return str(string(in.Layer)) })
	case "source":
		return sourceGetter(path[1:])
	case "destination":
		return destinationGetter(path[1:])
	case "connection":
		return connectionGetter(path[1:])
	case "request":
		return requestGetter(path[1:])
	}
	return never
}

func never(*Input) (value, bool) { return value{}, false }

func str(s string) (value, bool) { return stringValue(s), s != "" }

func port(p int) (value, bool) { return numberValue(p), p != 0 }

// leafOnly returns g when path names a scalar field itself; deeper paths
// into a scalar are never defined.
func leafOnly(path []string, g getter) getter {
	if len(path) != 1 {
		return never
	}
	return g
}

func sourceGetter(path []string) getter {
	if len(path) == 0 {
		return func(in *Input) (value, bool) { return value{kind: kindComposite, c: in.Source}, true }
	}
	fields := map[string]getter{
		"principal":       func(in *Input) (value, bool) { return str(in.Source.Principal) },
		"trust_domain":    func(in *Input) (value, bool) { return str(in.Source.TrustDomain) },
		"namespace":       func(in *Input) (value, bool) { return str(in.Source.Namespace) },
		"service_account": func(in *Input) (value, bool) { return str(in.Source.ServiceAccount) },
		"ip":              func(in *Input) (value, bool) { return str(in.Source.IP) },
		"port":            func(in *Input) (value, bool) { return port(in.Source.Port) },
		"remote_ip":       func(in *Input) (value, bool) { return str(in.Source.RemoteIP) },
	}
	return scalarField(fields, path)
}

func destinationGetter(path []string) getter {
	if len(path) == 0 {
		return func(in *Input) (value, bool) { return value{kind: kindComposite, c: in.Destination}, true }
	}
	if path[0] == "labels" {
		return stringMapGetter(path[1:], func(in *Input) map[string]string { return in.Destination.Labels })
	}
	fields := map[string]getter{
		"ip":              func(in *Input) (value, bool) { return str(in.Destination.IP) },
		"port":            func(in *Input) (value, bool) { return port(in.Destination.Port) },
		"namespace":       func(in *Input) (value, bool) { return str(in.Destination.Namespace) },
		"workload":        func(in *Input) (value, bool) { return str(in.Destination.Workload) },
		"service_account": func(in *Input) (value, bool) { return str(in.Destination.ServiceAccount) },
		"service":         func(in *Input) (value, bool) { return str(in.Destination.Service) },
	}
	return scalarField(fields, path)
}

func connectionGetter(path []string) getter {
	if len(path) == 0 {
		return func(in *Input) (value, bool) { return value{kind: kindComposite, c: in.Connection}, true }
	}
	fields := map[string]getter{
		"mtls": func(in *Input) (value, bool) { return value{kind: kindBool, b: in.Connection.MTLS}, true },
		"sni":  func(in *Input) (value, bool) { return str(in.Connection.SNI) },
	}
	return scalarField(fields, path)
}

func requestGetter(path []string) getter {
	if len(path) == 0 {
		return func(in *Input) (value, bool) {
			return value{kind: kindComposite, c: in.Request}, in.Request != nil
		}
	}
	switch path[0] {
	case "headers":
		return headersGetter(path[1:])
	case "auth":
		return authGetter(path[1:])
	}
	fields := map[string]getter{
		"method":   requestString(func(r *Request) string { return r.Method }),
		"path":     requestString(func(r *Request) string { return r.Path }),
		"url_path": requestString(func(r *Request) string { return r.URLPath }),
		"host":     requestString(func(r *Request) string { return r.Host }),
		"protocol": requestString(func(r *Request) string { return r.Protocol }),
	}
	return scalarField(fields, path)
}

func requestString(read func(*Request) string) getter {
	return func(in *Input) (value, bool) {
		if in.Request == nil {
			return value{}, false
		}
		return str(read(in.Request))
	}
}

func authGetter(path []string) getter {
	auth := func(in *Input) *Auth {
		if in.Request == nil {
			return nil
		}
		return in.Request.Auth
	}
	if len(path) == 0 {
		return func(in *Input) (value, bool) { a := auth(in); return value{kind: kindComposite, c: a}, a != nil }
	}
	switch path[0] {
	case "audiences":
		return leafOnly(path, func(in *Input) (value, bool) {
			a := auth(in)
			if a == nil || len(a.Audiences) == 0 {
				return value{}, false
			}
			return value{kind: kindComposite, c: a.Audiences}, true
		})
	case "claims":
		return func(in *Input) (value, bool) {
			a := auth(in)
			if a == nil || len(a.Claims) == 0 {
				return value{}, false
			}
			return jsonPath(a.Claims, path[1:])
		}
	}
	fields := map[string]getter{
		"principal": func(in *Input) (value, bool) {
			if a := auth(in); a != nil {
				return str(a.Principal)
			}
			return value{}, false
		},
		"presenter": func(in *Input) (value, bool) {
			if a := auth(in); a != nil {
				return str(a.Presenter)
			}
			return value{}, false
		},
	}
	return scalarField(fields, path)
}

func scalarField(fields map[string]getter, path []string) getter {
	g, ok := fields[path[0]]
	if !ok {
		return never
	}
	return leafOnly(path, g)
}

// headersGetter reads the request's headers: the document, or one
// header, from Headers or, when the caller gave net/http's form, from
// HTTPHeader under the name's canonical form, found once here.
func headersGetter(path []string) getter {
	switch len(path) {
	case 0:
		return func(in *Input) (value, bool) {
			if in.Request == nil {
				return value{}, false
			}
			m := in.Request.Headers
			if m == nil && in.Request.HTTPHeader != nil {
				m = HeadersOf(in.Request.HTTPHeader)
			}
			return value{kind: kindComposite, c: m}, len(m) > 0
		}
	case 1:
		name := path[0]
		canon := headerKey(name)
		return func(in *Input) (value, bool) {
			if in.Request == nil {
				return value{}, false
			}
			v, ok := in.Request.headerValue(name, canon)
			return stringValue(v), ok
		}
	}
	return never
}

// stringMapGetter reads a map of strings (labels, headers): the map itself,
// or one key.
func stringMapGetter(path []string, read func(*Input) map[string]string) getter {
	switch len(path) {
	case 0:
		return func(in *Input) (value, bool) {
			m := read(in)
			return value{kind: kindComposite, c: m}, len(m) > 0
		}
	case 1:
		key := path[0]
		return func(in *Input) (value, bool) {
			v, ok := read(in)[key]
			return stringValue(v), ok
		}
	}
	return never
}

// jsonPath walks a decoded JSON document (claims) down path.
func jsonPath(doc any, path []string) (value, bool) {
	for _, key := range path {
		m, ok := doc.(map[string]any)
		if !ok {
			return value{}, false
		}
		if doc, ok = m[key]; !ok {
			return value{}, false
		}
	}
	return goValue(doc)
}

// goValue converts a decoded JSON value.
func goValue(v any) (value, bool) {
	switch x := v.(type) {
	case nil:
		return value{kind: kindNull}, true
	case bool:
		return value{kind: kindBool, b: x}, true
	case string:
		return stringValue(x), true
	case float64:
		return value{kind: kindNumber, n: x}, true
	case int:
		return numberValue(x), true
	case json.Number:
		f, err := x.Float64()
		return value{kind: kindNumber, n: f}, err == nil
	}
	return value{kind: kindComposite, c: v}, true
}
