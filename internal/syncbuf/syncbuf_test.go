package syncbuf

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// Writers and readers at once (run with -race): every write is kept, and
// Lines gives the complete lines only.
func TestBufferConcurrent(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				fmt.Fprintf(&b, "w%d-%d\n", w, i)
				_ = b.String()
				_ = b.Lines()
			}
		})
	}
	wg.Wait()
	if n := len(b.Lines()); n != 400 {
		t.Fatalf("%d lines, want 400", n)
	}
	b.Write([]byte("partial"))
	if lines := b.Lines(); len(lines) != 400 || slices.Contains(lines, "partial") {
		t.Errorf("an unended line is counted: %d lines", len(lines))
	}
	if got := string(b.Bytes()); got != b.String() || got[len(got)-7:] != "partial" {
		t.Errorf("Bytes and String disagree: %q", got[len(got)-20:])
	}
	var empty Buffer
	if empty.Lines() != nil || empty.String() != "" {
		t.Error("an empty buffer has lines")
	}
}
