package jsonlines

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

type entry struct {
	N    int    `json:"n"`
	Path string `json:"path"`
}

// Lines from many goroutines arrive whole, one per line, with & < >
// unescaped; a nil Writer discards.
func TestWriter(t *testing.T) {
	var buf bytes.Buffer
	w := New[entry](&buf)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() { w.Write(entry{N: i, Path: "/a?b=1&c=<2>"}) })
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("%d lines, want 50", len(lines))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, `{"n":`) || !strings.HasSuffix(l, `"path":"/a?b=1&c=<2>"}`) {
			t.Fatalf("line %q: not one whole entry with the path unescaped", l)
		}
	}
	var none *Writer[entry] = New[entry](nil)
	none.Write(entry{}) // must not panic
}
