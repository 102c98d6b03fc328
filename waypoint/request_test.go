package waypoint

import (
	"bufio"
	"bytes"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy"
)

func addrPort(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }

func readRequest(t testing.TB, raw string) (*http.Request, error) {
	t.Helper()
	return http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
}

func TestRequestOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want policy.Request
	}{
		{
			name: "origin form, headers lower-cased and joined",
			raw:  "GET /a/%2e%2e/b?x=1 HTTP/1.1\r\nHost: Web.Shop\r\nX-Foo: a\r\nx-foo: b\r\nContent-Type: text/plain\r\n\r\n",
			want: policy.Request{Method: "GET", Path: "/a/%2e%2e/b?x=1", Host: "Web.Shop", Protocol: "HTTP/1.1",
				Headers: map[string]string{"x-foo": "a,b", "content-type": "text/plain"}},
		},
		{
			name: "absolute form",
			raw:  "POST http://web.shop/p?q HTTP/1.1\r\nHost: web.shop\r\n\r\n",
			want: policy.Request{Method: "POST", Path: "/p?q", Host: "web.shop", Protocol: "HTTP/1.1", Headers: map[string]string{}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := readRequest(t, tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			got := RequestOf(r)
			if got.Method != tc.want.Method || got.Path != tc.want.Path || got.Host != tc.want.Host || got.Protocol != tc.want.Protocol ||
				len(got.Headers) != len(tc.want.Headers) {
				t.Fatalf("RequestOf = %+v, want %+v", got, tc.want)
			}
			for k, v := range tc.want.Headers {
				if got.Headers[k] != v {
					t.Errorf("header %q = %q, want %q", k, got.Headers[k], v)
				}
			}
		})
	}
}

// The common header names RequestOf lowers from a table are the lower
// case of their canonical form, and cost no allocation: three of them
// cost three allocations fewer than three other names.
func TestRequestOfCommonHeaders(t *testing.T) {
	for canonical, lower := range commonHeaders {
		if canonical != http.CanonicalHeaderKey(canonical) || lower != strings.ToLower(canonical) {
			t.Errorf("commonHeaders[%q] = %q: want a canonical name and its lower case", canonical, lower)
		}
	}
	allocs := func(names ...string) float64 {
		raw := "GET / HTTP/1.1\r\nHost: web\r\n"
		for _, n := range names {
			raw += n + ": v\r\n"
		}
		r, err := readRequest(t, raw+"\r\n")
		if err != nil {
			t.Fatal(err)
		}
		return testing.AllocsPerRun(100, func() { RequestOf(r) })
	}
	common, other := allocs("User-Agent", "Accept", "Traceparent"), allocs("X-Tenant", "X-Team", "X-Trace")
	if common+3 != other {
		t.Errorf("RequestOf allocates %v times with three common headers, %v with three others; want 3 fewer", common, other)
	}
}

// FuzzRequestOf: whatever request net/http accepts maps to an input the
// engine accepts, with every header under its lower-case name.
func FuzzRequestOf(f *testing.F) {
	f.Add("GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
	f.Add("POST http://h/p HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n")
	f.Add("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := readRequest(t, raw)
		if err != nil {
			return
		}
		req := RequestOf(r)
		for name, values := range r.Header {
			if got := req.Headers[strings.ToLower(name)]; len(r.Header.Values(name)) == 1 && got != values[0] {
				t.Fatalf("header %q: %q, want %q", name, got, values[0])
			}
		}
		for name := range req.Headers {
			if name != strings.ToLower(name) {
				t.Fatalf("header name %q is not lower-case", name)
			}
		}
		in := policy.Input{Layer: policy.L7, Request: req}
		_ = in.Prepare() // must not panic; errors are the engine's to report (and deny)
		if req.Method != r.Method || !bytes.Equal([]byte(req.Host), []byte(r.Host)) {
			t.Fatalf("method/host changed: %+v", req)
		}
	})
}
