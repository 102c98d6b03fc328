package policy

import (
	"fmt"
	"slices"
	"testing"
)

// A keySet holds exactly its distinct keys, as a slice up to smallKeySet
// and as a map above, and lists them sorted either way.
func TestKeySet(t *testing.T) {
	for _, n := range []int{0, 1, 2, smallKeySet, smallKeySet + 1, 50} {
		var keys, want []valueKey
		for i := range n {
			k := stringValue(fmt.Sprintf("spiffe://td/ns/n%02d/sa/s", i)).key()
			want = append(want, k)
			keys = append(keys, k, k) // each twice, in reverse order
		}
		slices.Reverse(keys)
		keys = append(keys, numberValue(80).key()) // a number sorts before strings
		want = append([]valueKey{numberValue(80).key()}, want...)

		s := newKeySet(keys)
		if s.len() != len(want) || (s.many != nil) != (len(want) > smallKeySet) {
			t.Errorf("n=%d: %d keys (map: %v), want %d", n, s.len(), s.many != nil, len(want))
		}
		if got := s.sorted(); !slices.Equal(got, want) {
			t.Errorf("n=%d: sorted %v, want %v", n, got, want)
		}
		for _, k := range want {
			if !s.has(k) {
				t.Errorf("n=%d: has(%v) = false", n, k)
			}
		}
		for _, k := range []valueKey{stringValue("spiffe://td/ns/n99/sa/s").key(), numberValue(81).key(), stringValue("80").key()} {
			if s.has(k) {
				t.Errorf("n=%d: has(%v) = true", n, k)
			}
		}
	}
}
