package hbone

import (
	"testing"

	"golang.org/x/net/http2"
)

// Frames that RFC 9113 makes errors, as h2spec sends them: on a stream
// the client never opened (a connection error), and a stream made to
// depend on itself (a stream error).
func TestProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		send     func(c *h2Client) error
		goAway   bool // else RST_STREAM on stream 1
		wantCode http2.ErrCode
	}{
		{"RST_STREAM on an idle stream", func(c *h2Client) error {
			return c.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		}, true, http2.ErrCodeProtocol},
		{"WINDOW_UPDATE on an idle stream", func(c *h2Client) error {
			return c.fr.WriteWindowUpdate(1, 100)
		}, true, http2.ErrCodeProtocol},
		{"PRIORITY on itself", func(c *h2Client) error {
			return c.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 15})
		}, false, http2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			ts := startServer(t, m, &forward{})
			c := dialH2(t, m, ts)
			if err := tc.send(c); err != nil {
				t.Fatal(err)
			}
			if tc.goAway {
				if ga := c.goAway(); ga.ErrCode != tc.wantCode {
					t.Errorf("GOAWAY %v, want %v", ga.ErrCode, tc.wantCode)
				}
				return
			}
			f := c.next(func(f http2.Frame) bool { return f.Header().StreamID == 1 })
			if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != tc.wantCode {
				t.Errorf("stream 1 got %v, want RST_STREAM %v", f, tc.wantCode)
			}
		})
	}
}
