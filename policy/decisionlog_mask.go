package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"
)

// Decision-log masking follows OPA's convention: a bundle that defines
// data.system.log.mask (package system.log, rule mask) gets every decision
// event as input (input.input is the decision's input document,
// input.result its result) and returns what to take out of the event
// before it is written:
//
//	package system.log
//
//	mask contains "/input/request/headers/authorization"
//	mask contains {"op": "upsert", "path": "/input/request/auth/claims/email", "value": "**REDACTED**"} if {
//		input.input.request.auth.claims.email
//	}
//
// A string (or {"op": "remove", "path": ...}) erases the JSON pointer; an
// upsert replaces or adds a value. Pointers start with /input or /result.
// The event lists what was erased and what was masked ("erased",
// "masked"), as OPA's do. An event whose mask cannot be evaluated is not
// written at all (counted as dropped, reason "mask_error"): an unmasked
// event might carry the secret the mask exists to hide.
//
// OPA's own rule set (v1/plugins/logs) is unexported and tied to its plugin
// manager, so this file implements the same semantics: the same two
// operations, the same pointer prefixes, and a rule whose path is missing
// does nothing. TestMaskRules holds it to OPA's documented behaviour.

// maskRef is the rule OPA's decision logger consults (its default
// mask_decision, "/system/log/mask").
var maskRef = ast.MustParseRef("data.system.log.mask")

// logMask is a bundle set's prepared data.system.log.mask query.
type logMask struct {
	query rego.PreparedEvalQuery
}

// prepareLogMask prepares the mask query when the activated set defines
// data.system.log.mask (by rules or by data); nil when it does not.
func prepareLogMask(ctx context.Context, a *activation) (*logMask, error) {
	if len(a.compiler.GetRules(maskRef)) == 0 && !hasDataAt(a.data, "system", "log", "mask") {
		return nil, nil
	}
	q, err := rego.New(rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(maskRef)))),
		rego.Compiler(a.compiler), rego.Store(a.store)).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: prepare %s: %w", maskRef, err)
	}
	return &logMask{query: q}, nil
}

func hasDataAt(data map[string]any, path ...string) bool {
	var doc any = data
	for _, key := range path {
		obj, ok := doc.(map[string]any)
		if !ok {
			return false
		}
		if doc, ok = obj[key]; !ok {
			return false
		}
	}
	return true
}

// apply evaluates the mask for line and masks its input and result in
// place; erased and masked pointers are listed on the line.
func (m *logMask) apply(ctx context.Context, line *decisionLogLine) error {
	event, err := genericJSON(line)
	if err != nil {
		return err
	}
	doc, _ := event.(map[string]any)
	value, err := ast.InterfaceToValue(doc)
	if err != nil {
		return fmt.Errorf("mask input: %w", err)
	}
	rs, err := m.query.Eval(ctx, rego.EvalParsedInput(value))
	if err != nil {
		return fmt.Errorf("evaluate %s: %w", maskRef, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil // undefined: nothing to mask
	}
	rules, err := parseMaskRules(rs[0].Expressions[0].Value)
	if err != nil {
		return fmt.Errorf("%s: %w", maskRef, err)
	}
	t := maskTarget{input: doc["input"], result: doc["result"], hasInput: line.Input != nil}
	for _, r := range rules {
		r.apply(&t)
	}
	line.Input, line.Result = nil, t.result
	if t.hasInput {
		line.Input = t.input
	}
	line.Erased, line.Masked = t.erased, t.masked
	return nil
}

// genericJSON is v as encoding/json decodes it into any, numbers kept
// exact.
func genericJSON(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	if err := util.UnmarshalJSON(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// maskTarget is the part of an event a mask may change.
type maskTarget struct {
	input, result  any
	hasInput       bool // false: the event has no input, or it was erased
	erased, masked []string
}

// maskOp is what a mask rule does: remove (erase) or upsert.
type maskOp string

const (
	maskRemove maskOp = "remove"
	maskUpsert maskOp = "upsert"
)

// errMaskPath: a pointer does not lead to a value (removal) or a container
// (upsert); as in OPA, the rule then does nothing.
var errMaskPath = errors.New("mask path does not exist")

// maskRule is one entry of data.system.log.mask.
type maskRule struct {
	op    maskOp
	value any
	parts []string // escaped pointer segments; parts[0] is input or result
}

// parseMaskRules reads the mask's value: a set (array) of pointers and
// {"op", "path", "value"} objects.
func parseMaskRules(v any) ([]maskRule, error) {
	raw, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a set of JSON pointers or {\"op\", \"path\", \"value\"} objects, got %T", v)
	}
	rules := make([]maskRule, 0, len(raw))
	for _, item := range raw {
		var path string
		op, value := maskRemove, any(nil)
		switch x := item.(type) {
		case string:
			path = x
		case map[string]any:
			var err error
			if op, path, err = maskFields(x); err != nil {
				return nil, err
			}
			value = x["value"]
		default:
			return nil, fmt.Errorf("mask entry %v is a %T, want a string or an object", item, item)
		}
		r, err := newMaskRule(op, path, value)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// maskFields reads op (default remove) and path of an object entry.
func maskFields(x map[string]any) (maskOp, string, error) {
	op := maskRemove
	if v, set := x["op"]; set {
		s, _ := v.(string)
		if s != string(maskRemove) && s != string(maskUpsert) {
			return "", "", fmt.Errorf("mask op %v is not supported: use remove or upsert", v)
		}
		op = maskOp(s)
	}
	path, _ := x["path"].(string)
	return op, path, nil
}

func newMaskRule(op maskOp, path string, value any) (maskRule, error) {
	if path == "" {
		return maskRule{}, errors.New("mask must be non-empty")
	}
	if !strings.HasPrefix(path, "/") {
		return maskRule{}, fmt.Errorf("mask %q must be slash-prefixed", path)
	}
	parts := strings.Split(path[1:], "/")
	switch parts[0] {
	case "input", "result", "nd_builtin_cache": // the last is OPA's; regomesh events have none
	default:
		return maskRule{}, fmt.Errorf("mask %q: prefix not allowed: %s (use /input or /result)", path, parts[0])
	}
	for i, p := range parts {
		if _, err := url.PathUnescape(p); err != nil {
			return maskRule{}, fmt.Errorf("mask %q: %w", path, err)
		}
		parts[i] = url.PathEscape(p)
	}
	return maskRule{op: op, value: value, parts: parts}, nil
}

func (r maskRule) String() string { return "/" + strings.Join(r.parts, "/") }

// apply masks t as OPA's maskRule.Mask masks an event.
func (r maskRule) apply(t *maskTarget) {
	var obj *any
	switch r.parts[0] {
	case "input":
		if !t.hasInput {
			return
		}
		obj = &t.input
	case "result":
		if t.result == nil {
			return
		}
		obj = &t.result
	default:
		return
	}
	whole := len(r.parts) == 1
	switch r.op {
	case maskRemove:
		switch {
		case whole && r.parts[0] == "input":
			t.input, t.hasInput = nil, false
		case whole:
			*obj = nil
		case removeValue(r.parts[1:], obj) != nil:
			return
		}
		t.erased = append(t.erased, r.String())
	case maskUpsert:
		switch {
		case whole:
			*obj = r.value
		default:
			switch (*obj).(type) {
			case map[string]any, []any:
				if mkdirp(*obj, r.parts[1:], r.value) != nil {
					return
				}
			default:
				return
			}
		}
		t.masked = append(t.masked, r.String())
	}
}

// removeValue deletes the value at path below *node.
func removeValue(path []string, node *any) error {
	cur := *node
	var parent any
	var parentKey string
	for _, key := range path[:len(path)-1] {
		switch v := cur.(type) {
		case map[string]any:
			child, ok := v[key]
			if !ok {
				return errMaskPath
			}
			parent, parentKey, cur = v, key, child
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(v) {
				return errMaskPath
			}
			parent, parentKey, cur = v, key, v[i]
		default:
			return errMaskPath
		}
	}
	target := path[len(path)-1]
	switch v := cur.(type) {
	case map[string]any:
		if _, ok := v[target]; !ok {
			return errMaskPath
		}
		delete(v, target)
	case []any:
		i, err := strconv.Atoi(target)
		if err != nil || i < 0 || i >= len(v) {
			return errMaskPath
		}
		shorter := slices.Delete(v, i, i+1)
		switch p := parent.(type) {
		case []any:
			j, _ := strconv.Atoi(parentKey)
			p[j] = shorter
		case map[string]any:
			p[parentKey] = shorter
		case nil:
			*node = shorter
		}
	default:
		return errMaskPath
	}
	return nil
}

// mkdirp sets the value at path below node, creating objects on the way.
func mkdirp(node any, path []string, value any) error {
	for _, key := range path[:len(path)-1] {
		switch v := node.(type) {
		case map[string]any:
			child, ok := v[key]
			if !ok {
				child = map[string]any{}
				v[key] = child
			}
			node = child
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(v) {
				return errMaskPath
			}
			node = v[i]
		default:
			return errMaskPath
		}
	}
	last := path[len(path)-1]
	switch v := node.(type) {
	case map[string]any:
		v[last] = value
	case []any:
		i, err := strconv.Atoi(last)
		if err != nil || i < 0 || i >= len(v) {
			return errMaskPath
		}
		v[i] = value
	default:
		return errMaskPath
	}
	return nil
}
