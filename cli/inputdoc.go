package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// defaultMaxInputBytes bounds an input document. One connection or request
// is a few KiB even with large headers and JWT claims; the bound keeps a
// stray multi-megabyte file from costing seconds and gigabytes.
const defaultMaxInputBytes = 1 << 20

// maxInputDepth bounds the nesting of an input document, as encoding/json
// bounds what it decodes.
const maxInputDepth = 1000

// readLimited reads all of r (named name in messages) up to limit bytes,
// and refuses anything longer.
func readLimited(r io.Reader, name string, limit int64) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s is larger than --max-input-bytes (%d bytes): an input document describes one connection or request; check the file, or raise --max-input-bytes", name, limit)
	}
	return raw, nil
}

// readLimitedFile is readLimited on a file, or stdin for "-".
func readLimitedFile(path string, stdin io.Reader, limit int64) ([]byte, error) {
	if path == "-" {
		return readLimited(stdin, "stdin", limit)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, path, limit)
}

// inputJSON turns an input document, JSON or YAML, into JSON whose
// objects repeat no key at any depth: encoding/json would keep the last of
// two "source" keys (and match "Source" to it too), so a document that
// reads as one connection could be decided as another. A document that
// starts like JSON and does not parse as YAML either is reported as JSON,
// so a truncated file says so.
func inputJSON(raw []byte) ([]byte, error) {
	jsonErr := checkInputJSON(raw)
	if jsonErr == nil {
		return raw, nil
	}
	if json.Valid(raw) {
		return nil, jsonErr // a repeated key, or nesting too deep
	}
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		if startsLikeJSON(raw) {
			return nil, jsonErr
		}
		return nil, fmt.Errorf("YAML: %w", err)
	}
	if err := checkInputJSON(js); err != nil {
		var dup *duplicateKeyError
		if errors.As(err, &dup) {
			dup.line, dup.col = 0, 0 // positions in the converted JSON mean nothing to the user
		}
		return nil, err
	}
	return js, nil
}

func startsLikeJSON(raw []byte) bool {
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	return len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[' || trimmed[0] == '"')
}

// checkInputJSON reports whether data is one JSON value whose objects
// repeat no key. Keys compare regardless of case, as encoding/json matches
// them to the input's fields and Prepare lower-cases header names, except
// under destination.labels and request.auth.claims, whose keys are case
// sensitive.
func checkInputJSON(data []byte) error { return checkJSON(data, "input", false) }

// checkJSON reports whether data is one JSON value whose objects repeat no
// key; messages name paths from root, and exact compares keys as they are.
func checkJSON(data []byte, root string, exact bool) error {
	c := &jsonChecker{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	c.dec.UseNumber()
	if err := c.value(root, 0, exact); err != nil {
		return err
	}
	if _, err := c.dec.Token(); err != io.EOF {
		line, col := c.position(c.dec.InputOffset())
		return fmt.Errorf("JSON: trailing data after the document at line %d column %d", line, col)
	}
	return nil
}

// jsonChecker walks one JSON document token by token.
type jsonChecker struct {
	data []byte
	dec  *json.Decoder
}

// caseSensitiveKeys are the maps of the input document whose keys are
// data, compared exactly; every other object is matched to Go fields
// regardless of case.
var caseSensitiveKeys = map[string]bool{"input.destination.labels": true, "input.request.auth.claims": true}

func (c *jsonChecker) value(path string, depth int, exact bool) error {
	if depth > maxInputDepth {
		return fmt.Errorf("JSON: %s is nested deeper than %d levels", path, maxInputDepth)
	}
	tok, err := c.dec.Token()
	if err != nil {
		return c.syntaxError(err)
	}
	switch tok {
	case json.Delim('{'):
		return c.object(path, depth, exact)
	case json.Delim('['):
		for i := 0; c.dec.More(); i++ {
			if err := c.value(fmt.Sprintf("%s[%d]", path, i), depth+1, exact); err != nil {
				return err
			}
		}
		_, err := c.dec.Token()
		return c.syntaxError(err)
	}
	return nil
}

func (c *jsonChecker) object(path string, depth int, exact bool) error {
	seen := map[string]string{}
	for c.dec.More() {
		tok, err := c.dec.Token()
		if err != nil {
			return c.syntaxError(err)
		}
		key, _ := tok.(string)
		fold := key
		if !exact {
			fold = strings.ToLower(key)
		}
		if first, dup := seen[fold]; dup {
			line, col := c.position(c.dec.InputOffset())
			return &duplicateKeyError{path: path, first: first, again: key, line: line, col: col}
		}
		seen[fold] = key
		child := path + "." + key
		if err := c.value(child, depth+1, exact || caseSensitiveKeys[strings.ToLower(child)]); err != nil {
			return err
		}
	}
	_, err := c.dec.Token()
	return c.syntaxError(err)
}

// syntaxError says where the JSON breaks, and that a document ending early
// is truncated.
func (c *jsonChecker) syntaxError(err error) error {
	var syntax *json.SyntaxError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		line, col := c.position(int64(len(c.data)))
		return fmt.Errorf("JSON ends early at line %d column %d: the document is truncated, or a bracket or string is not closed", line, col)
	case errors.As(err, &syntax):
		line, col := c.position(syntax.Offset)
		return fmt.Errorf("JSON syntax error at line %d column %d: %s", line, col, strings.TrimPrefix(syntax.Error(), "json: "))
	}
	return fmt.Errorf("JSON: %w", err)
}

// position is the line and column (from 1) of the byte at offset.
func (c *jsonChecker) position(offset int64) (line, col int) {
	before := c.data[:min(max(offset, 0), int64(len(c.data)))]
	line = bytes.Count(before, []byte("\n")) + 1
	return line, len(before) - bytes.LastIndexByte(before, '\n')
}

// duplicateKeyError is an object of the input that repeats a key.
type duplicateKeyError struct {
	path, first, again string
	line, col          int // 0 when unknown
}

func (e *duplicateKeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "JSON: %s: key %q appears twice", e.path, e.again)
	if e.first != e.again {
		fmt.Fprintf(&b, " (as %q and %q: keys match fields regardless of case)", e.first, e.again)
	}
	if e.line > 0 {
		fmt.Fprintf(&b, ", again at line %d column %d", e.line, e.col)
	}
	b.WriteString("; which one would count is ambiguous, so remove one")
	return b.String()
}
