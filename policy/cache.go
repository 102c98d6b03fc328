package policy

import (
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"
)

// decisionCache memoises the L4 decisions of one bundle generation, keyed
// by the input fields the policy can observe (a key holds only those; the
// rest stay zero). It is replaced, never cleared in place, when the
// generation or the mesh state changes, so an entry never outlives the
// policy that produced it.
//
// Every L4 decision that is not a hit pays a lookup and a store, so both
// are cheap: a shard is a set-associative table, not a map. A key's hash
// picks a shard and a set of cacheWays slots in it; a lookup compares the
// set's hashes and then the whole key, and a store into a full set
// overwrites its slots in turn (the oldest written first). A set's slots
// are allocated on its first store, so an idle cache holds little, and
// none afterwards: a miss allocates nothing once its set exists
// (allocation on every miss drove the collector, which marks the whole
// compiled bundle set, and with it the mean latency).
type decisionCache struct {
	spec   cacheSpec
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const (
	cacheShards = 16
	cacheWays   = 4
)

// cacheShard holds its sets; a nil set has never been stored into.
type cacheShard struct {
	mu   sync.RWMutex
	sets []*cacheSet
}

// cacheSet: a slot is in use when its bit in used is set; next is the
// slot a store into the full set overwrites.
type cacheSet struct {
	slots [cacheWays]cacheEntry
	used  uint8
	next  uint8
}

// cacheEntry keeps the whole key: a hash collision is a miss, never a hit.
type cacheEntry struct {
	key  l4Key
	hash uint64
	d    Decision
}

// l4Key holds every field an L4 input has, so equal keys are equal inputs
// as far as the policy can tell.
type l4Key struct {
	principal, trustDomain, srcNamespace, srcServiceAccount, srcIP, remoteIP string
	srcPort, dstPort                                                         int
	dstIP, dstNamespace, dstWorkload, dstServiceAccount, dstSvc              string
	mtls                                                                     bool
	sni                                                                      string
	labels                                                                   [maxKeyLabels]string
	labelsPresent                                                            uint8
	allLabels                                                                string // canonical form, when every label is observed
}

const maxKeyLabels = 7

// cacheSpec says which fields go into a key.
type cacheSpec struct {
	fields      uint32   // bits: one per scalar field
	labelKeys   []string // observed label keys (at most maxKeyLabels)
	everyLabel  bool
	everyScalar bool
}

var scalarBits = map[string]uint32{
	"input.source.principal": 1 << 0, "input.source.trust_domain": 1 << 1,
	"input.source.namespace": 1 << 2, "input.source.service_account": 1 << 3,
	"input.source.ip": 1 << 4, "input.source.port": 1 << 5,
	"input.destination.ip": 1 << 6, "input.destination.port": 1 << 7,
	"input.destination.namespace": 1 << 8, "input.destination.workload": 1 << 9,
	"input.destination.service_account": 1 << 10, "input.destination.service": 1 << 11,
	"input.connection.mtls": 1 << 12, "input.connection.sni": 1 << 13,
	"input.source.remote_ip": 1 << 14,
}

// rawValidated are the fields Prepare validates or derives from: every key
// holds them as the caller gave them, so a hit implies an input that
// validated before, and the cache can answer before Prepare runs.
const rawValidated uint32 = 1<<0 | 1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<6 | 1<<14

// everything is the key of a policy whose reads are not known.
var everything = cacheSpec{fields: 1<<15 - 1, everyLabel: true, everyScalar: true}

// specFor derives the key from the paths the native rules read.
func specFor(paths []string) cacheSpec {
	s := cacheSpec{fields: rawValidated}
	for _, p := range paths {
		p = basePath(p)
		if bit, ok := scalarBits[p]; ok {
			s.fields |= bit
			continue
		}
		if k, ok := strings.CutPrefix(p, "input.destination.labels."); ok && !strings.Contains(k, ".") {
			s.labelKeys = append(s.labelKeys, k)
			continue
		}
		if strings.HasPrefix(p, "input.request") || p == "input.layer" {
			continue // absent or constant at L4
		}
		return everything // a whole object, or a path inside a label value
	}
	slices.Sort(s.labelKeys)
	s.labelKeys = slices.Compact(s.labelKeys)
	if len(s.labelKeys) > maxKeyLabels {
		s.labelKeys, s.everyLabel = nil, true
	}
	return s
}

// basePath strips lower(...)/upper(...) from a derived field's path.
func basePath(p string) string {
	for {
		open := strings.IndexByte(p, '(')
		if open < 0 || !strings.HasSuffix(p, ")") {
			return p
		}
		p = p[open+1 : len(p)-1]
	}
}

// newDecisionCache makes a cache of about size entries (at least one
// set per shard).
func newDecisionCache(spec cacheSpec, size int) *decisionCache {
	c := &decisionCache{spec: spec, seed: maphash.MakeSeed()}
	sets := max(1, size/cacheShards/cacheWays)
	for i := range c.shards {
		c.shards[i].sets = make([]*cacheSet, sets)
	}
	return c
}

// fillKey sets k to the observed fields of in, as the caller gave them
// (before Prepare); k must be zero.
func (c *decisionCache) fillKey(k *l4Key, in *Input) {
	f := c.spec.fields
	has := func(bit uint32) bool { return f&bit != 0 }
	if has(1 << 0) {
		k.principal = in.Source.Principal
	}
	if has(1 << 1) {
		k.trustDomain = in.Source.TrustDomain
	}
	if has(1 << 2) {
		k.srcNamespace = in.Source.Namespace
	}
	if has(1 << 3) {
		k.srcServiceAccount = in.Source.ServiceAccount
	}
	if has(1 << 4) {
		k.srcIP = in.Source.IP
	}
	if has(1 << 5) {
		k.srcPort = in.Source.Port
	}
	if has(1 << 6) {
		k.dstIP = in.Destination.IP
	}
	if has(1 << 7) {
		k.dstPort = in.Destination.Port
	}
	if has(1 << 8) {
		k.dstNamespace = in.Destination.Namespace
	}
	if has(1 << 9) {
		k.dstWorkload = in.Destination.Workload
	}
	if has(1 << 10) {
		k.dstServiceAccount = in.Destination.ServiceAccount
	}
	if has(1 << 11) {
		k.dstSvc = in.Destination.Service
	}
	if has(1 << 12) {
		k.mtls = in.Connection.MTLS
	}
	if has(1 << 13) {
		k.sni = in.Connection.SNI
	}
	if has(1 << 14) {
		k.remoteIP = in.Source.RemoteIP
	}
	c.keyLabels(k, in.Destination.Labels)
}

func (c *decisionCache) keyLabels(k *l4Key, labels map[string]string) {
	if c.spec.everyLabel {
		k.allLabels = canonicalLabels(labels)
		return
	}
	for i, name := range c.spec.labelKeys {
		if v, ok := labels[name]; ok {
			k.labels[i] = v
			k.labelsPresent |= 1 << i
		}
	}
}

// canonicalLabels renders labels unambiguously: each key and value is
// prefixed by its length.
func canonicalLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		fmt.Fprintf(&b, "%d:%s%d:%s", len(k), k, len(v), v)
	}
	return b.String()
}

// hash covers every field of the key: the non-empty strings (the fields
// the policy observes), each followed by its length and place, so equal
// values in different fields hash apart, and the ports, the label
// presence bits and mTLS. A key whose strings fit hashBuffer is hashed in
// one call; a longer one is streamed (which key takes which way depends
// on the key alone, so a key always hashes alike). Equal hashes are only
// candidates: get compares the whole key.
func (c *decisionCache) hash(k *l4Key) uint64 {
	strs := [...]string{k.principal, k.trustDomain, k.srcNamespace, k.srcServiceAccount, k.srcIP, k.remoteIP,
		k.dstIP, k.dstNamespace, k.dstWorkload, k.dstServiceAccount, k.dstSvc, k.sni, k.allLabels,
		k.labels[0], k.labels[1], k.labels[2], k.labels[3], k.labels[4], k.labels[5], k.labels[6]}
	shape := uint64(k.srcPort)<<32 | uint64(k.dstPort)<<8 | uint64(k.labelsPresent)
	if k.mtls {
		shape |= 1 << 63
	}
	var buf [hashBuffer]byte
	n := 0
	for i := range strs {
		if len(strs[i]) == 0 {
			continue
		}
		if n+len(strs[i])+3 > len(buf) {
			return c.hashStream(&strs, shape)
		}
		n += copy(buf[n:], strs[i])
		buf[n], buf[n+1], buf[n+2] = byte(len(strs[i])), byte(len(strs[i])>>8), byte(i)
		n += 3
	}
	return mix(maphash.Bytes(c.seed, buf[:n]) ^ shape)
}

// mix spreads every bit of h over all of them (splitmix64's finalizer):
// shape puts the ports and mTLS in high bits, and locate picks the shard
// and the set by the low ones.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// hashBuffer bounds the strings of a key hashed in one call: SPIFFE IDs,
// names and addresses fit many times over.
const hashBuffer = 256

// hashStream is hash for keys whose strings do not fit hashBuffer: each
// string streamed, its length and place folded into shape.
func (c *decisionCache) hashStream(strs *[20]string, shape uint64) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	for i := range strs {
		if strs[i] != "" {
			h.WriteString(strs[i])
			shape = (shape ^ (uint64(len(strs[i]))<<5 | uint64(i))) * 0x100000001b3
		}
	}
	return mix(h.Sum64() ^ shape)
}

// locate is the shard and the set a hash picks: the shard from its low
// bits, the set from the rest.
func (c *decisionCache) locate(h uint64) (*cacheShard, int) {
	s := &c.shards[h%cacheShards]
	return s, int((h / cacheShards) % uint64(len(s.sets)))
}

func (c *decisionCache) get(k *l4Key) (Decision, uint64, bool) {
	h := c.hash(k)
	s, i := c.locate(h)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if set := s.sets[i]; set != nil {
		for w := range set.slots {
			if e := &set.slots[w]; set.used&(1<<w) != 0 && e.hash == h && e.key == *k {
				return e.d, h, true
			}
		}
	}
	return Decision{}, h, false
}

// put stores d under k (whose hash is h): over the slot with the same
// hash (the same key, or a collision: the newer decision wins), else in a
// free slot, else over the set's oldest.
func (c *decisionCache) put(h uint64, k *l4Key, d Decision) {
	s, i := c.locate(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.sets[i]
	if set == nil {
		set = new(cacheSet)
		s.sets[i] = set
	}
	w := set.slotFor(h)
	set.slots[w] = cacheEntry{key: *k, hash: h, d: d}
	set.used |= 1 << w
}

func (set *cacheSet) slotFor(h uint64) int {
	free := -1
	for w := range set.slots {
		switch {
		case set.used&(1<<w) == 0:
			if free < 0 {
				free = w
			}
		case set.slots[w].hash == h:
			return w
		}
	}
	if free >= 0 {
		return free
	}
	w := int(set.next)
	set.next = uint8((w + 1) % cacheWays)
	return w
}
