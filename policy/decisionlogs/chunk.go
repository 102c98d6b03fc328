package decisionlogs

import (
	"bytes"
	"compress/gzip"
)

// chunk is one upload: a gzip-compressed JSON array of events.
type chunk struct {
	body   []byte
	events [][]byte
}

// chunks packs events, in order, into uploads each no larger than limit
// bytes compressed, the way OPA's chunk encoder bounds them (its wire
// format: a gzip stream of one JSON array). An event too large to fit
// alone is left out and counted in tooLarge.
func chunks(events [][]byte, limit int64) (out []chunk, tooLarge int) {
	hint := 1 // events in the last chunk: where the next one's search starts
	for len(events) > 0 {
		n, body := fit(events, limit, hint)
		if n == 0 {
			tooLarge++
			events = events[1:]
			continue
		}
		out = append(out, chunk{body: body, events: events[:n:n]})
		events = events[n:]
		hint = n
	}
	return out, tooLarge
}

// fit returns a count of leading events whose compressed array fits in
// limit, and that array: starting from hint, doubling the count while it
// fits, then a binary search between the last that fitted and the first
// that did not. An array filling 90% of limit is taken at once, as OPA's
// encoder flushes at a threshold, so a steady stream of events costs
// about one compression per upload.
func fit(events [][]byte, limit int64, hint int) (int, []byte) {
	lo, body := 0, []byte(nil)
	hi := len(events) + 1 // the smallest count known not to fit
	for n := min(max(hint, 1), len(events)); n < hi; {
		b := encode(events[:n])
		switch {
		case int64(len(b)) > limit:
			hi = n
		case int64(len(b)) >= limit*9/10:
			return n, b
		default:
			lo, body = n, b
		}
		if hi <= len(events) {
			n = lo + (hi-lo)/2
		} else {
			n = min(2*n, len(events))
		}
		if n == lo {
			break
		}
	}
	return lo, body
}

// encode compresses events as one JSON array.
func encode(events [][]byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write([]byte{'['}) // writes to a bytes.Buffer do not fail
	for i, e := range events {
		if i > 0 {
			w.Write([]byte{','})
		}
		w.Write(e)
	}
	w.Write([]byte{']'})
	w.Close()
	return buf.Bytes()
}
