package hbone

import (
	"bytes"
	"io"
	"net"
	"slices"
	"testing"
)

// countingConn counts the writes that reach a real socket.
type countingConn struct {
	net.Conn
	writes []int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return c.Conn.Write(p)
}

func TestBatchConnGathersWhileHeld(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a}
	bc := newBatchConn(cc)
	var want bytes.Buffer
	write := func(n int, fill byte) {
		t.Helper()
		p := bytes.Repeat([]byte{fill}, n)
		if m, err := bc.Write(p); err != nil || m != n {
			t.Fatalf("Write(%d) = %d, %v", n, m, err)
		}
		want.Write(p)
	}

	write(100, 'a') // not held: straight through
	bc.hold()
	record := recordSize + 22 // a full TLS 1.3 record on the wire
	for i := range 4 {
		write(record, byte('b'+i))
	}
	if len(cc.writes) != 1 {
		t.Fatalf("writes reached the socket while held: %v", cc.writes)
	}
	write(record, 'f') // the fifth record does not fit: the first four go out
	if err := bc.flush(); err != nil {
		t.Fatal(err)
	}
	write(batchSize+1, 'g') // not held and too large to gather anyway
	bc.hold()
	write(10, 'h')
	bc.Conn.(*countingConn).Conn.(*net.TCPConn).CloseWrite() // ends the stream below the batch...
	if err := bc.flush(); err == nil {
		t.Errorf("flush after the socket's write side closed: no error")
	}
	wantWrites := []int{100, 4 * record, record, batchSize + 1, 10}
	if !slices.Equal(cc.writes, wantWrites) {
		t.Errorf("socket writes %v, want %v", cc.writes, wantWrites)
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	want.Truncate(want.Len() - 10) // ...so the last batch never arrives
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("received %d bytes, want %d in the order written", len(got), want.Len())
	}
}
