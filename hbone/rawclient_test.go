package hbone

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client is a hand-driven HTTP/2 client over mTLS with the mesh
// client's SVID: it sends what a hostile peer would, frame by frame.
type h2Client struct {
	t    testing.TB
	tc   *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

// dialH2 connects to ts and exchanges the preface and SETTINGS.
func dialH2(t testing.TB, m *mesh, ts *testServer) *h2Client {
	t.Helper()
	d := tls.Dialer{Config: clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID)}
	nc, err := d.DialContext(testContext(t), "tcp", ts.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &h2Client{t: t, tc: nc.(*tls.Conn)}
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.fr = http2.NewFramer(c.tc, c.tc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.tc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// connect opens stream id with a CONNECT to authority.
func (c *h2Client) connect(id uint32, authority string) error {
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	c.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true})
}

// next reads frames until one satisfies want, failing the test when the
// connection ends first.
func (c *h2Client) next(want func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("connection ended before the frame the test waits for: %v", err)
		}
		if want(f) {
			return f
		}
	}
}

// goAway reads frames until GOAWAY.
func (c *h2Client) goAway() *http2.GoAwayFrame {
	c.t.Helper()
	return c.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
}

// closedSoon reports whether the server closes nc within d, without nc
// having sent anything.
func closedSoon(nc net.Conn, d time.Duration) bool {
	nc.SetReadDeadline(time.Now().Add(d))
	_, err := nc.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}
