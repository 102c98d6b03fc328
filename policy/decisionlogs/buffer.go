package decisionlogs

// buffer holds encoded events waiting for upload, oldest first, within
// its bounds: pushing past either bound drops the oldest events, as OPA's
// buffers do, so the newest decisions are the ones kept.
//
// Invariant: bytes is the sum of len(e) over events, and after push
// returns, len(events) <= maxEvents (when > 0) and bytes <= maxBytes
// (when > 0), except for a single event larger than maxBytes, which is
// itself dropped.
type buffer struct {
	events    [][]byte
	bytes     int64
	maxBytes  int64 // 0: no bound in bytes
	maxEvents int64 // 0: no bound in events
}

// push appends events and returns how many events (old or new) were
// dropped to stay within bounds.
func (b *buffer) push(events ...[]byte) (dropped int) {
	for _, e := range events {
		b.events = append(b.events, e)
		b.bytes += int64(len(e))
	}
	return b.trim()
}

// requeue puts events back in front of the buffer (an upload that failed)
// and returns how many were dropped to stay within bounds, oldest first.
func (b *buffer) requeue(events [][]byte) (dropped int) {
	for _, e := range events {
		b.bytes += int64(len(e))
	}
	b.events = append(events[:len(events):len(events)], b.events...)
	return b.trim()
}

func (b *buffer) trim() (dropped int) {
	for len(b.events) > 0 && (b.maxEvents > 0 && int64(len(b.events)) > b.maxEvents || b.maxBytes > 0 && b.bytes > b.maxBytes) {
		b.bytes -= int64(len(b.events[0]))
		b.events[0] = nil
		b.events = b.events[1:]
		dropped++
	}
	return dropped
}

// take empties the buffer and returns what it held.
func (b *buffer) take() [][]byte {
	events := b.events
	b.events, b.bytes = nil, 0
	return events
}
