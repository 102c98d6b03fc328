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

// chunks packs events, in order, into as few uploads as it can, each no
// larger than limit bytes compressed, the way OPA's chunk encoder bounds
// them (its wire format: a gzip stream of one JSON array). An event too
// large to fit alone is left out and counted in tooLarge.
func chunks(events [][]byte, limit int64) (out []chunk, tooLarge int) {
	for len(events) > 0 {
		n, body := fit(events, limit)
		if n == 0 {
			tooLarge++
			events = events[1:]
			continue
		}
		out = append(out, chunk{body: body, events: events[:n:n]})
		events = events[n:]
	}
	return out, tooLarge
}

// fit returns the most leading events whose compressed array fits in
// limit, and that array: doubling the count while it fits, then a binary
// search between the last that fitted and the first that did not.
func fit(events [][]byte, limit int64) (int, []byte) {
	lo, body := 0, []byte(nil)
	hi := len(events) + 1 // the smallest count known not to fit
	for n := 1; n < hi; {
		b := encode(events[:n])
		if int64(len(b)) > limit {
			hi = n
		} else {
			lo, body = n, b
		}
		if hi <= len(events) {
			n = lo + (hi-lo)/2
			if n == lo {
				break
			}
		} else {
			n = min(2*n, len(events))
			if n == lo {
				break
			}
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
