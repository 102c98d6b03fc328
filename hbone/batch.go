package hbone

import (
	"net"
	"sync"
)

// batchConn sits between TLS and the TCP connection and gathers the TLS
// records of one frame write into one system call. crypto/tls writes each
// record (at most 16 KiB of plaintext) with its own Write, so a 64 KiB
// DATA frame would cost four sends, and on a busy host every send pays
// the whole network stack's per-packet work once more; batched, it pays
// it once.
//
// conn turns batching on while it holds its write lock and flushes when it
// releases it (lockWrite, unlockWrite), so nothing written through conn
// waits for a later write. Outside that window, including the TLS
// handshake and the alerts and key updates crypto/tls sends on its own,
// writes go straight through, behind anything gathered before them.
type batchConn struct {
	net.Conn

	mu       sync.Mutex
	batching bool
	buf      *[]byte // gathered records; pooled, nil when empty
}

// batchSize is what one send carries at most: four full TLS records with
// their overhead (a 64 KiB frame); a larger frame goes out in several.
const batchSize = 4 * (recordSize + 256)

var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, batchSize); return &b }}

func newBatchConn(c net.Conn) *batchConn { return &batchConn{Conn: c} }

// Write gathers p while batching, and sends it otherwise.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		if err := b.sendLocked(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	if b.buf != nil && len(*b.buf)+len(p) > batchSize {
		if err := b.sendLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > batchSize { // not a record crypto/tls writes; never gathered
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = batchBuffers.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// hold starts gathering writes.
func (b *batchConn) hold() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// flush stops gathering and sends what was gathered.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	return b.sendLocked()
}

// sendLocked sends the gathered records and returns the buffer to the
// pool, so an idle connection holds none. Call with mu held.
func (b *batchConn) sendLocked() error {
	if b.buf == nil {
		return nil
	}
	_, err := b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	batchBuffers.Put(b.buf)
	b.buf = nil
	return err
}
