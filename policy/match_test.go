package policy

import (
	"context"
	"fmt"
	"math"
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

// -0 and 0 are one number, as they were one key of a map; an empty set
// holds nothing.
func TestKeySetZeroes(t *testing.T) {
	negZero := value{kind: kindNumber, n: math.Copysign(0, -1)}.key()
	s := newKeySet([]valueKey{negZero, numberValue(0).key()})
	if s.len() != 1 || !s.has(numberValue(0).key()) || !s.has(negZero) {
		t.Errorf("{-0, 0}: %d keys, has 0 %v, has -0 %v", s.len(), s.has(numberValue(0).key()), s.has(negZero))
	}
	if empty := newKeySet(nil); empty.len() != 0 || empty.has(numberValue(0).key()) || len(empty.sorted()) != 0 {
		t.Errorf("the empty set: %+v", empty)
	}
}

// A membership in an empty collection holds for nothing: a bundle with one
// loads (the index once divided by the collection's size), and its rules
// decide as topdown decides them.
func TestEmptyMembership(t *testing.T) {
	dir := writeBundle(t, t.TempDir(), map[string]string{
		"mesh/policies/t/empty/p.rego": `package mesh.policies.t.empty

allow contains {"policy": "t/empty", "rule": "array"} if {
	input.destination.port in []
}

allow contains {"policy": "t/empty", "rule": "set"} if {
	input.source.namespace in set()
}

deny contains {"policy": "t/empty", "rule": "not-in"} if {
	not input.destination.port in []
	input.destination.port == 9
}

allow contains {"policy": "t/empty", "rule": "port"} if {
	input.destination.port == 80
}
`})
	native := loadEngine(t, Config{Logger: quietLogger()}, dir)
	topdown := loadEngine(t, Config{Topdown: true, Logger: quietLogger()}, dir)
	for _, port := range []int{80, 9, 443} {
		in := Input{Layer: L4, Source: Source{Principal: "spiffe://td/ns/a/sa/b", IP: "10.0.0.1"},
			Destination: Destination{IP: "10.0.0.2", Port: port}, Connection: Connection{MTLS: true}}
		got, err := native.Decide(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := topdown.Decide(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		if got.Allow != want.Allow || got.Policy != want.Policy || got.Rule != want.Rule || got.Reason != want.Reason ||
			(port == 9 && (got.Allow || got.Rule != "not-in")) || (port == 80 && !got.Allow) {
			t.Errorf("port %d: native %+v, topdown %+v", port, got, want)
		}
	}
}
