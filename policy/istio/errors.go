package istio

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

var (
	// ErrDecode marks input that is not a well-formed AuthorizationPolicy
	// document: YAML syntax, wrong types, unknown fields.
	ErrDecode = errors.New("istio: decode")
	// ErrInvalid marks a policy that Istio would reject, or that regomesh
	// cannot enforce as written.
	ErrInvalid = errors.New("istio: invalid policy")
)

// FieldError is one problem with one field of one policy. Its message reads
// "<file>:<line>: <namespace>/<name>: <field path>: <problem>", each part
// present when known.
type FieldError struct {
	Pos     string // "policies.yaml:17", or empty
	Policy  string // "<namespace>/<name>", or empty
	Field   string // "spec.rules[0].from[1].source.principals[2]", or empty
	Problem string
	kind    error // ErrInvalid or ErrDecode
}

func (e *FieldError) Error() string {
	parts := make([]string, 0, 4)
	for _, s := range []string{e.Pos, e.Policy, e.Field, e.Problem} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ": ")
}

// Unwrap lets callers test errors.Is(err, ErrInvalid) or ErrDecode.
func (e *FieldError) Unwrap() error { return e.kind }

// problems collects the FieldErrors of one resource.
type problems struct {
	p    resource // nil: problems of no one resource
	kind error
	errs []error
	// reference names the Istio reference unknown fields are checked
	// against: "AuthorizationPolicy" when empty.
	reference string
}

// resource is an Istio resource that messages name and locate.
type resource interface {
	ID() string
	position(field string) string
}

// add records a problem with field (a path under the policy, "" for the
// policy itself).
func (ps *problems) add(field, format string, args ...any) {
	e := &FieldError{Field: field, Problem: fmt.Sprintf(format, args...), kind: ps.kind}
	if ps.p != nil {
		e.Policy = ps.p.ID()
		e.Pos = ps.p.position(field)
	}
	ps.errs = append(ps.errs, e)
}

// err joins the problems in the order of their lines.
func (ps *problems) err() error { return errors.Join(ps.sorted()...) }

func (ps *problems) sorted() []error {
	slices.SortStableFunc(ps.errs, func(a, b error) int { return cmp.Compare(lineNumber(a), lineNumber(b)) })
	return ps.errs
}

// lineNumber is the line a FieldError points at, or 0.
func lineNumber(err error) int {
	var fe *FieldError
	if !errors.As(err, &fe) {
		return 0
	}
	n, _ := strconv.Atoi(fe.Pos[strings.LastIndexByte(fe.Pos, ':')+1:])
	return n
}

// position names the file and line of field, or of its closest ancestor
// with a known line, or the policy's origin.
func (p *Policy) position(field string) string {
	return positionIn(p.file, p.lines, field, p.Origin)
}

// positionIn is file:line of field, or of its closest ancestor in lines,
// or origin.
func positionIn(file string, lines *lineIndex, field, origin string) string {
	for path := field; path != ""; path = parentPath(path) {
		if line, ok := lines.line(path); ok {
			return fmt.Sprintf("%s:%d", file, line)
		}
	}
	return origin
}

// parentPath drops the last element of a field path:
// "a.b[2]" -> "a.b" -> "a" -> "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}
