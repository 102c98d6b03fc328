package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// The server acknowledges the client's first SETTINGS (RFC 9113 6.5.3)
// and answers a PING, both through the control queue.
func TestServerAcknowledgesSettingsAndPing(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, &forward{})
	tc, err := tls.Dial("tcp", ts.addr.String(), clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	ping := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := fr.WritePing(false, ping); err != nil {
		t.Fatal(err)
	}
	var settingsAcked, pingAcked bool
	for !settingsAcked || !pingAcked {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's frames (SETTINGS ack %v, PING ack %v): %v", settingsAcked, pingAcked, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			settingsAcked = settingsAcked || f.IsAck()
		case *http2.PingFrame:
			if f.IsAck() && f.Data == ping {
				pingAcked = true
			}
		}
	}
}

// A stream the client resets and the next one it opens reach the server
// in that order: the RST_STREAM, queued for the control writer, goes out
// before the next HEADERS. Otherwise a client opening and closing streams
// one at a time runs ahead of its queued resets, and the server, counting
// streams it has not seen end, refuses new ones at its limit.
func TestResetsGoOutBeforeTheNextStream(t *testing.T) {
	m := newMesh(t)
	ts := startServer(t, m, HandlerFunc(func(ctx context.Context, t *Tunnel) {
		if s, err := t.Accept(); err == nil {
			io.Copy(io.Discard, s)
		}
	}), func(c *ServerConfig) { c.MaxConcurrentStreams = 10 })
	p := newTestPool(t, m)
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))
	for i := range 5000 {
		s, err := p.Dial(testContext(t), req)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		s.Close() // nothing received yet: RST_STREAM
	}
}
