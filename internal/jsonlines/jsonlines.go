// Package jsonlines writes one JSON document per line, from many
// goroutines: the access logs of ztunnel and the waypoint.
package jsonlines

import (
	"encoding/json"
	"io"
	"sync"
)

// Writer writes each entry of type E as one JSON line (HTML characters
// left as they are); safe for concurrent use. A nil Writer discards.
type Writer[E any] struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// New writes to w; a nil w gives a nil Writer, which discards.
func New[E any](w io.Writer) *Writer[E] {
	if w == nil {
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &Writer[E]{enc: enc}
}

// Write writes one line. A line that cannot be written is dropped: an
// access log must never stop traffic.
func (l *Writer[E]) Write(e E) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.enc.Encode(e)
}
