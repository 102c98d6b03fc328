package policy

import (
	"fmt"
	"strings"
	"testing"
)

func cacheDecision(reason string) Decision {
	return Decision{Verdict: Verdict{Allow: true, Reason: reason}}
}

// A key stored is found with its own decision; the same value in another
// field is another key; a key too long for one hashing call is found too.
func TestCacheFindsWhatItStored(t *testing.T) {
	c := newDecisionCache(everything, 1024)
	long := strings.Repeat("x", 2*hashBuffer)
	keys := []l4Key{
		{srcNamespace: "a"},
		{dstNamespace: "a"},
		{srcNamespace: "a", dstPort: 80},
		{principal: long},
		{principal: long, srcNamespace: "a"},
		{principal: "spiffe://td/ns/a/sa/b", labels: [maxKeyLabels]string{"v1"}, labelsPresent: 1},
		{principal: "spiffe://td/ns/a/sa/b", labels: [maxKeyLabels]string{"", "v1"}, labelsPresent: 2},
	}
	for i := range keys {
		if _, _, found := c.get(&keys[i]); found {
			t.Fatalf("key %d found before it was stored", i)
		}
	}
	for i := range keys {
		_, h, _ := c.get(&keys[i])
		c.put(h, &keys[i], cacheDecision(fmt.Sprint(i)))
	}
	for i := range keys {
		d, _, found := c.get(&keys[i])
		if !found || d.Reason != fmt.Sprint(i) {
			t.Errorf("key %d: found=%v decision %q; want its own, %q", i, found, d.Reason, fmt.Sprint(i))
		}
	}
}

// A hash collision is a miss: an entry stored under another key's hash
// never answers for that key.
func TestCacheCollisionIsAMiss(t *testing.T) {
	c := newDecisionCache(everything, 1024)
	mine, other := l4Key{srcIP: "10.0.0.1"}, l4Key{srcIP: "10.0.0.2"}
	_, h, _ := c.get(&mine)
	c.put(h, &other, cacheDecision("other")) // other's entry, under mine's hash
	if d, _, found := c.get(&mine); found {
		t.Fatalf("a colliding entry answered: %+v", d)
	}
	c.put(h, &mine, cacheDecision("mine")) // the newer decision wins the slot
	if d, _, found := c.get(&mine); !found || d.Reason != "mine" {
		t.Errorf("after its own store: found=%v %q", found, d.Reason)
	}
}

// The cache never holds more than its size (rounded to whole sets), every
// store is found at once, and a set that filled overwrites its oldest.
func TestCacheIsBounded(t *testing.T) {
	const size = 256
	c := newDecisionCache(everything, size)
	for i := range 20 * size {
		k := l4Key{srcIP: fmt.Sprintf("10.3.%d.%d", i>>8, i&0xff)}
		_, h, _ := c.get(&k)
		c.put(h, &k, cacheDecision(k.srcIP))
		if d, _, found := c.get(&k); !found || d.Reason != k.srcIP {
			t.Fatalf("store %d not found at once: found=%v %q", i, found, d.Reason)
		}
	}
	held := 0
	for i := range c.shards {
		for _, set := range c.shards[i].sets {
			if set != nil {
				for w := range cacheWays {
					held += int(set.used >> w & 1)
				}
			}
		}
	}
	if held > size || held < size/2 {
		t.Errorf("holds %d entries after %d distinct stores; want at most %d and most of them", held, 20*size, size)
	}
	var set cacheSet
	for w := range cacheWays {
		if got := set.slotFor(uint64(w + 1)); got != w {
			t.Fatalf("store %d into an empty set took slot %d", w, got)
		}
		set.slots[w].hash, set.used = uint64(w+1), set.used|1<<w
	}
	for i := range 2 * cacheWays {
		if got := set.slotFor(uint64(100 + i)); got != i%cacheWays {
			t.Errorf("store %d into the full set took slot %d; want %d, the oldest", i, got, i%cacheWays)
		}
	}
}

// Keys that differ only in a port, or in mTLS, spread over the shards and
// sets as keys differing in a string do: the ports sit in the hash's high
// bits before mix, and locate reads the low ones.
func TestCacheSpreadsPorts(t *testing.T) {
	c := newDecisionCache(everything, 65536)
	for _, tc := range []struct {
		name string
		key  func(i int) l4Key
	}{
		{"source port", func(i int) l4Key { return l4Key{srcIP: "10.0.0.1", dstIP: "10.0.0.2", srcPort: 30000 + i} }},
		{"destination port", func(i int) l4Key { return l4Key{srcIP: "10.0.0.1", dstIP: "10.0.0.2", dstPort: 1 + i} }},
		{"a long key's source port", func(i int) l4Key {
			return l4Key{principal: strings.Repeat("p", 2*hashBuffer), srcPort: 30000 + i}
		}},
	} {
		type place struct {
			shard *cacheShard
			set   int
		}
		places := map[place]bool{}
		shards := map[*cacheShard]bool{}
		for i := range 1000 {
			k := tc.key(i)
			s, set := c.locate(c.hash(&k))
			shards[s] = true
			places[place{s, set}] = true
		}
		if len(shards) < cacheShards || len(places) < 600 {
			t.Errorf("%s: 1000 keys in %d shards and %d places; want every shard and most places", tc.name, len(shards), len(places))
		}
	}
}
