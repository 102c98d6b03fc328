package policy

import "sync"

// reasonMemo remembers the deny reasons that name the ALLOW policies
// selecting a destination, by the set of those policies. The same
// destinations are decided again and again, and a reason naming a hundred
// policies would otherwise be built, and allocated, on every such
// decision; that garbage, and the collector marking the compiled policy
// set because of it, kept the mean decision time far above the median.
//
// Invariant: a remembered reason is selectingReason of entries whose
// distinct ranks are exactly its ranks; ranks are per program, and so is
// the memo. It holds at most reasonMemoSize reasons; past that, reasons
// are built per decision as before.
type reasonMemo struct {
	mu     sync.RWMutex
	byHash map[uint64][]rememberedReason
	size   int
}

type rememberedReason struct {
	ranks  []int32
	reason string
}

const reasonMemoSize = 4096

func newReasonMemo() *reasonMemo { return &reasonMemo{byHash: map[uint64][]rememberedReason{}} }

// selecting is selectingReason(names), for names sorted by rank.
func (m *reasonMemo) selecting(names []*entry) string {
	h, ok := rankHash(names)
	if m == nil || !ok {
		return selectingReason(names)
	}
	m.mu.RLock()
	reason, found := m.find(h, names)
	m.mu.RUnlock()
	if found {
		return reason
	}
	reason = selectingReason(names)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, found := m.find(h, names); !found && m.size < reasonMemoSize {
		m.byHash[h] = append(m.byHash[h], rememberedReason{ranks: distinctRanks(names), reason: reason})
		m.size++
	}
	return reason
}

func (m *reasonMemo) find(h uint64, names []*entry) (string, bool) {
	for _, r := range m.byHash[h] {
		if sameRanks(r.ranks, names) {
			return r.reason, true
		}
	}
	return "", false
}

// rankHash hashes the distinct ranks of names; false when an entry has no
// rank (topdown's entries), which the memo does not serve.
func rankHash(names []*entry) (uint64, bool) {
	h := uint64(14695981039346656037)
	for i, e := range names {
		if e.rank <= 0 {
			return 0, false
		}
		if i > 0 && e.rank == names[i-1].rank {
			continue
		}
		h = (h ^ uint64(e.rank)) * 1099511628211
	}
	return h, true
}

func distinctRanks(names []*entry) []int32 {
	var out []int32
	for i, e := range names {
		if i == 0 || e.rank != names[i-1].rank {
			out = append(out, e.rank)
		}
	}
	return out
}

func sameRanks(ranks []int32, names []*entry) bool {
	n := 0
	for i, e := range names {
		if i > 0 && e.rank == names[i-1].rank {
			continue
		}
		if n >= len(ranks) || ranks[n] != e.rank {
			return false
		}
		n++
	}
	return n == len(ranks)
}
