package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// wire is what a tunnel carries, as the waypoint serves it.
type wire int

const (
	wireTCP   wire = iota // opaque: relayed with L4 policy only
	wireHTTP1             // HTTP/1.1 (net/http)
	wireHTTP2             // HTTP/2 with prior knowledge, h2c (x/net/http2)
)

func (w wire) String() string { return [...]string{"tcp", "http/1.1", "h2c"}[w] }

// sniffLimit bounds how many bytes sniffing reads before it decides.
const sniffLimit = 4 << 10

// verdict is what the bytes seen so far say.
type verdict int

const (
	needMore verdict = iota // a prefix of an HTTP/1.1 request line or of the HTTP/2 preface
	isHTTP1
	isHTTP2
	isOther
)

// preface is the HTTP/2 client connection preface (RFC 9113 3.4).
var preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// sniff classifies the first bytes of a connection: the HTTP/2 preface, an
// HTTP/1.x request line ("TOKEN SP TARGET SP HTTP/1.x" and a line end),
// something else, or a prefix of one of the first two.
func sniff(b []byte) verdict {
	switch {
	case bytes.HasPrefix(b, preface):
		return isHTTP2
	case bytes.HasPrefix(preface, b):
		return needMore // includes no bytes at all
	}
	return sniffRequestLine(b)
}

func sniffRequestLine(b []byte) verdict {
	method := span(b, isTokenChar)
	if method == len(b) {
		return needMore
	}
	if method == 0 || b[method] != ' ' {
		return isOther
	}
	rest := b[method+1:]
	target := span(rest, func(c byte) bool { return c > ' ' && c < 0x7f })
	if target == len(rest) {
		return needMore
	}
	if target == 0 || rest[target] != ' ' {
		return isOther
	}
	return sniffVersion(rest[target+1:])
}

// sniffVersion accepts HTTP/1.0 and HTTP/1.1 ended by CRLF or LF, as
// net/http reads request lines.
func sniffVersion(v []byte) verdict {
	for _, want := range []string{"HTTP/1.1\r\n", "HTTP/1.0\r\n", "HTTP/1.1\n", "HTTP/1.0\n"} {
		switch {
		case bytes.HasPrefix(v, []byte(want)):
			return isHTTP1
		case bytes.HasPrefix([]byte(want), v):
			return needMore
		}
	}
	return isOther
}

func span(b []byte, ok func(byte) bool) int {
	for i, c := range b {
		if !ok(c) {
			return i
		}
	}
	return len(b)
}

// isTokenChar reports an RFC 9110 tchar, what a method is made of.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// settle turns what sniffing saw, once no more bytes are coming (the limit,
// a timeout, the client's end of stream), into a wire. Nothing at all is
// opaque TCP (a server-first protocol waits for the server). Any prefix of
// HTTP goes to the HTTP parsers, never to the L4 relay: a request line too
// long for the sniffing window, or sent slowly, must not escape L7 policy;
// net/http and x/net/http2 refuse what is not really HTTP.
func settle(v verdict, seen int) wire {
	switch {
	case v == isHTTP2:
		return wireHTTP2
	case v == isHTTP1:
		return wireHTTP1
	case v == needMore && seen > 0:
		return wireHTTP1 // a partial preface is also a partial request line only if it is "PRI ..."
	}
	return wireTCP
}

// detect decides how to serve a tunnel. A declared protocol wins: HTTP2
// and GRPC are h2c; HTTP is HTTP/1.1 unless the client opens with the
// HTTP/2 preface (a gRPC client on an "http" port); TCP is relayed.
// Undeclared ports are sniffed for at most timeout.
func detect(c *tunnelConn, declared state.PortProtocol, timeout time.Duration) wire {
	switch declared {
	case state.PortHTTP2, state.PortGRPC:
		return wireHTTP2
	case state.PortTCP:
		return wireTCP
	}
	v, seen := c.sniff(timeout)
	if declared == state.PortHTTP {
		if v == isHTTP2 || (v == needMore && seen > 0 && bytes.HasPrefix(preface, c.peeked())) {
			return wireHTTP2
		}
		return wireHTTP1
	}
	if v == needMore && seen > 0 && bytes.HasPrefix(preface, c.peeked()) {
		return wireHTTP2
	}
	return settle(v, seen)
}

// tunnelConn is a tunnel's stream with the bytes sniffing read put back in
// front. It is deliberately not an io.WriterTo: copying from it must go
// through Read, or the sniffed bytes would be skipped.
type tunnelConn struct {
	net.Conn
	client  *client // every request on the connection is this client's
	br      *bufio.Reader
	onClose func()
	closed  sync.Once
}

func newTunnelConn(c net.Conn, onClose func()) *tunnelConn {
	return &tunnelConn{Conn: c, br: bufio.NewReaderSize(c, sniffLimit), onClose: onClose}
}

func (c *tunnelConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// CloseWrite ends the client-bound direction, for the L4 relay's
// half-close.
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// lingerTimeout bounds how long a closed tunnel waits for its client to
// end its side, as net/http lingers before closing a TCP connection.
const lingerTimeout = 2 * time.Second

// Close ends the client-bound direction at once, so the client reads the
// whole last response and EOF, and closes the stream once the client has
// ended its side too (or after lingerTimeout): closing a stream whose
// client has not ended its side resets it, and a reset may overtake the
// response still unread in the client's buffer. onClose runs once the
// stream is closed. Close never blocks: net/http calls it with its server
// lock held when it closes idle connections.
func (c *tunnelConn) Close() error {
	c.closed.Do(func() {
		c.CloseWrite()
		go c.linger()
	})
	return nil
}

func (c *tunnelConn) linger() {
	c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, c.Conn) // until the client's EOF, a reset or the deadline
	c.Conn.Close()
	if c.onClose != nil {
		c.onClose()
	}
}

func (c *tunnelConn) peeked() []byte {
	b, _ := c.br.Peek(c.br.Buffered())
	return b
}

// sniff reads until the bytes decide, sniffLimit is reached, the client
// ends its side or timeout passes, and returns the verdict and how many
// bytes it saw. The bytes stay buffered for whoever serves the tunnel.
func (c *tunnelConn) sniff(timeout time.Duration) (verdict, int) {
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	for {
		b := c.peeked()
		if v := sniff(b); v != needMore || len(b) >= sniffLimit {
			return v, len(b)
		}
		if _, err := c.br.Peek(len(b) + 1); err != nil { // timeout, or the client ended its side
			b = c.peeked()
			return sniff(b), len(b)
		}
	}
}
