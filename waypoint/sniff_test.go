package waypoint

import (
	"bytes"
	"testing"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want verdict
	}{
		{name: "nothing yet", in: "", want: needMore},
		{name: "request line", in: "GET /a HTTP/1.1\r\nHost: x\r\n", want: isHTTP1},
		{name: "HTTP/1.0 with LF", in: "POST /a?b=c HTTP/1.0\n", want: isHTTP1},
		{name: "method so far", in: "GE", want: needMore},
		{name: "target so far", in: "GET /long/path/not/ended", want: needMore},
		{name: "version so far", in: "GET / HTTP/1.", want: needMore},
		{name: "preface", in: string(preface) + "\x00\x00", want: isHTTP2},
		{name: "preface so far", in: "PRI * HTTP/2", want: needMore},
		{name: "TLS client hello", in: "\x16\x03\x01\x02\x00\x01", want: isOther},
		{name: "redis inline command", in: "SET key value\r\n", want: isOther},
		{name: "HTTP/2 version on a request line", in: "GET / HTTP/2.0\r\n", want: isOther},
		{name: "space first", in: " GET / HTTP/1.1\r\n", want: isOther},
		{name: "binary", in: "\x00\x01\x02", want: isOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sniff([]byte(tc.in)); got != tc.want {
				t.Errorf("sniff(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// Once bytes are seen, whatever is left undecided goes to the HTTP
// parsers, never to the L4 relay: a slow or overlong request line must not
// escape L7 policy.
func TestSettleFailsTowardsHTTP(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    verdict
		seen int
		want wire
	}{
		{name: "silence is TCP", v: needMore, seen: 0, want: wireTCP},
		{name: "partial request line is HTTP", v: needMore, seen: 10, want: wireHTTP1},
		{name: "over the limit is HTTP", v: needMore, seen: sniffLimit, want: wireHTTP1},
		{name: "other is TCP", v: isOther, seen: 3, want: wireTCP},
		{name: "preface is h2c", v: isHTTP2, seen: 24, want: wireHTTP2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := settle(tc.v, tc.seen); got != tc.want {
				t.Errorf("settle(%v, %d) = %v, want %v", tc.v, tc.seen, got, tc.want)
			}
		})
	}
}

// A long request line (beyond the sniffing window) to an undeclared port
// is still served as HTTP and decided per request.
func TestLongRequestLineIsNotRelayed(t *testing.T) {
	m := newTestMesh(t)
	c := m.http1Client(addrPort(webVIP, 8081))
	long := "/private/" + string(bytes.Repeat([]byte("a"), 2*sniffLimit))
	if a := do(t, c, "GET", "http://web.shop"+long, nil); a.status != 403 {
		t.Fatalf("long request line: %d, want 403 (decided at L7)", a.status)
	}
}

func TestDeclaredProtocolWins(t *testing.T) {
	if got := detect(nil, state.PortGRPC, 0); got != wireHTTP2 {
		t.Errorf("grpc port: %v", got)
	}
	if got := detect(nil, state.PortTCP, 0); got != wireTCP {
		t.Errorf("tcp port: %v", got)
	}
}

// FuzzSniff: sniffing never panics, and a decision never changes when more
// bytes arrive.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", string(preface), "PRI * HTTP/2.0\r\n", "\x16\x03\x01", "SET k v\r\n", "GET /a HTTP/1."} {
		f.Add([]byte(s), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		v := sniff(b)
		if v == needMore {
			return
		}
		if w := sniff(append(bytes.Clone(b), more...)); w != v {
			t.Fatalf("sniff(%q) = %v, but with %q appended %v", b, v, more, w)
		}
	})
}
