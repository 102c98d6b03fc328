package waypoint

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// A response of unknown length reaches the client as the backend writes
// it, before the backend is done, over HTTP/1.1 and h2c: the proxy
// buffers only responses whose length is known (upstream.go).
func TestStreamedResponseFlushes(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			m := newTestMesh(t)
			release := make(chan struct{})
			var once sync.Once
			done := func() { once.Do(func() { close(release) }) }
			defer done()
			m.setFlakyAnswer(func(_ *scriptedBackend, _ int64, w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "first\n")
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "second\n")
			})
			c := m.http1Client(netip.AddrPortFrom(flakyVIP, 80))
			if proto == "h2c" {
				c = m.h2cClient(netip.AddrPortFrom(flakyVIP, 80))
			}
			c.Timeout = 10 * time.Second
			resp, err := c.Get("http://flaky.shop/stream")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := bufio.NewReader(resp.Body)
			if line, err := body.ReadString('\n'); line != "first\n" {
				t.Fatalf("while the backend still writes: %q, %v; want its first line", line, err)
			}
			done()
			if rest, err := io.ReadAll(body); string(rest) != "second\n" || err != nil {
				t.Fatalf("the rest: %q, %v; want the second line", rest, err)
			}
		})
	}
}
