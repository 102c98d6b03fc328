package hbone

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// TraceParent is a W3C Trace Context traceparent
// (https://www.w3.org/TR/trace-context/): the trace a tunnel belongs to
// and the span that opened it. The zero value is "no trace context".
type TraceParent struct {
	TraceID  [16]byte
	ParentID [8]byte
	Flags    byte // bit 0: sampled
}

// NewTraceParent starts a new trace: random trace and parent IDs, not
// sampled. The client uses it for a tunnel opened without a trace context.
func NewTraceParent() TraceParent {
	var t TraceParent
	for !t.IsValid() {
		rand.Read(t.TraceID[:])
		rand.Read(t.ParentID[:])
	}
	return t
}

// IsValid reports whether t carries a trace: W3C makes all-zero IDs invalid.
func (t TraceParent) IsValid() bool {
	return t.TraceID != [16]byte{} && t.ParentID != [8]byte{}
}

// String formats t as a version 00 traceparent:
// 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.
func (t TraceParent) String() string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], t.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], t.ParentID[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{t.Flags})
	return string(b[:])
}

// ParseTraceParent parses a traceparent header value. Version 00 must be
// exactly 55 characters; a later version may append "-" and more fields,
// which are ignored as the specification asks. Hex must be lower case,
// version ff and all-zero IDs are invalid.
//
// The server ignores an invalid traceparent (the tunnel then carries the
// zero TraceParent) instead of refusing the tunnel, as W3C prescribes.
func ParseTraceParent(s string) (TraceParent, error) {
	var t TraceParent
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return t, fmt.Errorf("hbone: traceparent %q: want 00-<32 hex>-<16 hex>-<2 hex>", s)
	}
	var version [1]byte
	if !lowerHex(version[:], s[0:2]) || version[0] == 0xff {
		return t, fmt.Errorf("hbone: traceparent %q: invalid version", s)
	}
	if (version[0] == 0 && len(s) != 55) || (len(s) > 55 && s[55] != '-') {
		return t, fmt.Errorf("hbone: traceparent %q: unexpected trailing data", s)
	}
	var flags [1]byte
	if !lowerHex(t.TraceID[:], s[3:35]) || !lowerHex(t.ParentID[:], s[36:52]) || !lowerHex(flags[:], s[53:55]) {
		return TraceParent{}, fmt.Errorf("hbone: traceparent %q: want lower-case hex", s)
	}
	t.Flags = flags[0]
	if !t.IsValid() {
		return TraceParent{}, fmt.Errorf("hbone: traceparent %q: all-zero trace or parent ID", s)
	}
	return t, nil
}

// lowerHex decodes s into dst, accepting only 0-9 and a-f.
func lowerHex(dst []byte, s string) bool {
	for i := range len(s) {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	_, err := hex.Decode(dst, []byte(s))
	return err == nil
}
