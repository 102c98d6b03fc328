package waypoint

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
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
			headers := documentHeaders(t, got)
			if got.Method != tc.want.Method || got.Path != tc.want.Path || got.Host != tc.want.Host || got.Protocol != tc.want.Protocol ||
				len(headers) != len(tc.want.Headers) {
				t.Fatalf("RequestOf = %+v, headers %v; want %+v", got, headers, tc.want)
			}
			for k, v := range tc.want.Headers {
				if headers[k] != v {
					t.Errorf("header %q = %q, want %q", k, headers[k], v)
				}
			}
		})
	}
}

// documentHeaders is the headers document of req as policies and the
// decision log see it: its JSON form's.
func documentHeaders(t testing.TB, req *policy.Request) map[string]string {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Headers map[string]string `json:"headers"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Headers
}

// RequestOf copies no header: one allocation (the request) with three
// headers or with thirty.
func TestRequestOfCopiesNoHeader(t *testing.T) {
	allocs := func(n int) float64 {
		raw := "GET / HTTP/1.1\r\nHost: web\r\n"
		for i := range n {
			raw += fmt.Sprintf("X-Header-%d: v\r\n", i)
		}
		r, err := readRequest(t, raw+"\r\n")
		if err != nil {
			t.Fatal(err)
		}
		return testing.AllocsPerRun(100, func() { RequestOf(r) })
	}
	if three, thirty := allocs(3), allocs(30); three != 1 || thirty != 1 {
		t.Errorf("RequestOf allocates %v times with three headers, %v with thirty; want 1", three, thirty)
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
		headers := documentHeaders(t, req)
		for name, values := range r.Header {
			if got := headers[strings.ToLower(name)]; len(r.Header.Values(name)) == 1 && got != values[0] {
				t.Fatalf("header %q: %q, want %q", name, got, values[0])
			}
		}
		for name := range headers {
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
