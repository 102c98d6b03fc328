package hbone

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/regomesh/regomesh/internal/testgo"
)

// gatedWriter holds the first Write until released, as a slow upstream
// does, and keeps what it was given.
type gatedWriter struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
	got     []byte
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered); <-w.release })
	w.got = append(w.got, p...)
	return len(p), nil
}

// A Close (or a stream ending) while WriteTo is handing a received chunk
// to a slow writer must neither recycle that chunk under the writer nor
// break WriteTo's accounting.
func TestWriteToSurvivesCloseMidWrite(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	p := newTestPool(t, m)
	s := m.dial(t, p, ts, startEcho(t))
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	w := &gatedWriter{entered: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	testgo.Go(t, func(context.Context) {
		_, err := s.WriteTo(w)
		done <- err
	})
	<-w.entered
	s.Close()
	buf := make([]byte, recvChunkSize) // a recycled chunk would be reused here
	chunkPool.Put(&buf)
	for range 4 {
		b := chunkPool.Get().(*[]byte)
		for i := range *b {
			(*b)[i] = 'X'
		}
	}
	close(w.release)
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteTo after Close: %v, want net.ErrClosed", err)
	}
	if string(w.got) != "hello" {
		t.Errorf("the writer got %q, want the echoed bytes", w.got)
	}
}
