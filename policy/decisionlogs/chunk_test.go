package decisionlogs

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"testing"
)

// FuzzChunks: whatever the events and the limit, every upload is a gzip
// stream of one JSON array no larger than the limit, the uploads hold
// the events in order, and only events too large alone are left out.
func FuzzChunks(f *testing.F) {
	f.Add(uint16(200), uint8(30), uint16(40), uint32(7))
	f.Add(uint16(90), uint8(5), uint16(3000), uint32(1))
	f.Add(uint16(4096), uint8(200), uint16(10), uint32(3))
	f.Fuzz(func(t *testing.T, limit uint16, n uint8, maxPad uint16, seed uint32) {
		lim := max(int64(limit), minUploadLimitBytes)
		var events [][]byte
		for i := range int(n) {
			k := uint64(i)*uint64(seed) + uint64(i)*7919
			pad := bytes.Repeat([]byte{byte('a' + k%26)}, int(k%(uint64(maxPad)+1)))
			events = append(events, []byte(fmt.Sprintf(`{"decision_id":"%d","pad":%q}`, i, pad)))
		}
		cs, tooLarge := chunks(events, lim)
		var got [][]byte
		for i, c := range cs {
			if int64(len(c.body)) > lim {
				t.Fatalf("upload %d is %d bytes, over %d", i, len(c.body), lim)
			}
			zr, err := gzip.NewReader(bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(zr)
			var arr []json.RawMessage
			if err := json.Unmarshal(raw, &arr); err != nil || len(arr) != len(c.events) {
				t.Fatalf("upload %d: %d elements (%v), want %d", i, len(arr), err, len(c.events))
			}
			for j := range arr {
				if !bytes.Equal(arr[j], c.events[j]) {
					t.Fatalf("upload %d element %d = %s, want %s", i, j, arr[j], c.events[j])
				}
			}
			got = append(got, c.events...)
		}
		// Left out: exactly the events that do not fit alone.
		var want [][]byte
		left := 0
		for _, e := range events {
			if int64(len(encode([][]byte{e}))) > lim {
				left++
				continue
			}
			want = append(want, e)
		}
		if tooLarge != left || len(got) != len(want) {
			t.Fatalf("%d uploaded, %d too large; want %d and %d", len(got), tooLarge, len(want), left)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("event %d out of order: %s, want %s", i, got[i], want[i])
			}
		}
	})
}
