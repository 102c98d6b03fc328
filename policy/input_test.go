package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

func TestNormalizePath(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"plain", "/api/v1", "/api/v1"},
		{"query removed", "/api?x=1&y=2", "/api"},
		{"fragment removed", "/api#top", "/api"},
		{"dot segment", "/a/./b", "/a/b"},
		{"dot dot", "/a/b/../c", "/a/c"},
		{"dot dot above root", "/../../admin", "/admin"},
		{"trailing dot dot", "/a/b/..", "/a/"},
		{"trailing dot", "/a/.", "/a/"},
		{"encoded dots resolve", "/catalog/%2e%2e/admin", "/admin"},
		{"unreserved decoded", "/%61dmin/%7Euser", "/admin/~user"},
		{"reserved kept in its case", "/a%2fb/%3F", "/a%2fb/%3F"},
		{"backslash", `/a\b\..\c`, "/a/c"},
		{"slashes not merged", "//a//b", "//a//b"},
		{"truncated escape kept", "/a%2", "/a%2"},
		{"empty", "", ""},
		{"asterisk form", "*", "*"},
		{"query only", "?x", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := NormalizePath(tc.in); got != tc.want {
				t.Errorf("NormalizePath(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestNormalizePathBase holds NormalizePath to every row of the BASE table
// of Istio's path normalization integration test
// (tests/integration/security/normalization_test.go), input and output.
func TestNormalizePathBase(t *testing.T) {
	rows := []struct{ in, want string }{
		{"/", "/"},
		{"/app#foo", "/app"},
		{"/app/", "/app/"},
		{"/app/../admin", "/admin"},
		{"/app", "/app"},
		{"/app//", "/app//"},
		{"/app/%2f", "/app/%2f"},
		{"/app%2f/", "/app%2f/"},
		{"/xyz%30..//abc", "/xyz0..//abc"},
		{"/app/%2E./admin", "/admin"},
		{`/app\admin`, "/app/admin"},
		{`/app/\/\/\admin`, "/app//////admin"},
		{"/%2Fapp%5cadmin%5Cabc", "/%2Fapp%5cadmin%5Cabc"},
		{`/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc`, "/%5Capp%2f%5c%2F..%2fadmin%5c/abc"},
		{"/app//../admin", "/app/admin"},
		{"/app//../../admin", "/admin"},
	}
	for _, r := range rows {
		t.Run(r.in, func(t *testing.T) {
			if got := NormalizePath(r.in); got != r.want {
				t.Errorf("NormalizePath(%q) = %q, want %q", r.in, got, r.want)
			}
		})
	}
}

func TestDecodeInputErrors(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"unknown field", `{"layer": "l4", "source": {"principle": "x"}}`, `unknown field "principle"`},
		{"wrong type", `{"layer": "l4", "destination": {"port": "80"}}`, "input.destination.port: expected int"},
		{"syntax", `{"layer": `, "JSON syntax error"},
		{"trailing data", `{"layer": "l4"} {}`, "trailing data"},
		{"validation", `{"layer": "l4", "source": {"ip": "nope"}}`, "input.source.ip"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeInput([]byte(tc.doc))
			if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want ErrInvalidInput mentioning %q", err, tc.want)
			}
		})
	}
}

func TestInputJSONRoundTrip(t *testing.T) {
	in := toAdmin("spiffe://td/ns/shop/sa/checkout")
	in.Request.Headers = map[string]string{"x-team": "red"}
	in.Request.Auth = &Auth{Principal: "iss/sub", Audiences: []string{"a"}, Claims: map[string]any{"groups": []any{"x"}}}
	if err := in.Prepare(); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeInput(raw)
	if err != nil {
		t.Fatal(err)
	}
	// Numbers inside claims decode as json.Number; compare through JSON.
	again, _ := json.Marshal(back)
	if string(again) != string(raw) {
		t.Errorf("round trip changed the document:\n%s\n%s", raw, again)
	}
	if !reflect.DeepEqual(back.Source, in.Source) || back.Request.URLPath != "/admin/users" {
		t.Errorf("decoded %+v", back)
	}
}

func TestPlaintextInputHasNoPrincipal(t *testing.T) {
	in := Input{Layer: L4, Source: Source{IP: "10.0.0.1"}}
	raw, _ := json.Marshal(in)
	if strings.Contains(string(raw), "principal") || !strings.Contains(string(raw), `"mtls":false`) {
		t.Errorf("plaintext input JSON = %s", raw)
	}
}

func FuzzDecodeInput(f *testing.F) {
	f.Add([]byte(`{"layer": "l4", "source": {"principal": "spiffe://td/ns/a/sa/b", "ip": "10.0.0.1"}, "destination": {"port": 80}}`))
	f.Add([]byte(`{"layer": "l7", "request": {"path": "/a/../%2e%2e/b?x", "headers": {"X-A": "1"}}}`))
	f.Add([]byte(`{"layer": "l4", "source": {"namespace": "a"}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeInput(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("error does not wrap ErrInvalidInput: %v", err)
			}
			return
		}
		// A decoded input is prepared: idempotent, and its JSON decodes again.
		again := in
		if err := again.Prepare(); err != nil {
			t.Fatalf("Prepare on a decoded input: %v", err)
		}
		raw, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeInput(raw); err != nil {
			t.Fatalf("re-decoding %s: %v", raw, err)
		}
		if in.Request != nil && NormalizePath(in.Request.URLPath) != in.Request.URLPath {
			t.Fatalf("url_path %q is not a fixed point of NormalizePath", in.Request.URLPath)
		}
	})
}

func TestPrepareSplitsSpaceDelimitedClaims(t *testing.T) {
	claims := map[string]any{
		"scope":      "write  read",
		"permission": "append",
		"roles":      "a b",
		"empty":      "",
		"groups":     []any{"x y"},
		"nested":     map[string]any{"scope": "a b"},
	}
	auth := &Auth{Principal: "iss/sub", Claims: claims}
	in := Input{Layer: L7, Request: &Request{Path: "/", Auth: auth}}
	if err := in.Prepare(); err != nil {
		t.Fatal(err)
	}
	got := in.Request.Auth.Claims
	want := map[string]any{
		"scope":      []any{"write", "read"},
		"permission": []any{"append"},
		"roles":      "a b",
		"empty":      "",
		"groups":     []any{"x y"},
		"nested":     map[string]any{"scope": "a b"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("claims after Prepare = %#v\nwant %#v", got, want)
	}
	if claims["scope"] != "write  read" || in.Request.Auth == auth {
		t.Errorf("Prepare changed the caller's Auth: %#v", claims)
	}
	again := in
	if err := again.Prepare(); err != nil || !reflect.DeepEqual(again.Request.Auth.Claims, want) {
		t.Errorf("Prepare is not idempotent: %#v, %v", again.Request.Auth.Claims, err)
	}
}

func TestWithSpaceDelimitedClaims(t *testing.T) {
	auth := &Auth{Claims: map[string]any{"teams": "red blue", "scope": "x"}}
	got := auth.WithSpaceDelimitedClaims("teams")
	if !reflect.DeepEqual(got.Claims["teams"], []any{"red", "blue"}) || got.Claims["scope"] != "x" {
		t.Errorf("claims = %#v", got.Claims)
	}
	if same := auth.WithSpaceDelimitedClaims("absent"); same != auth {
		t.Errorf("no claim to split, yet a copy: %#v", same)
	}
}

// An input prepared once keeps the addresses it found valid (a waypoint
// decides each request of a tunnel with the tunnel's prepared input); an
// address changed since, in the input or in a copy of it, is checked again.
func TestPrepareChecksChangedAddresses(t *testing.T) {
	prepared := Input{Layer: L4,
		Source:      Source{IP: "10.0.0.1", RemoteIP: "192.0.2.7"},
		Destination: Destination{IP: "10.0.0.2", Port: 80},
	}
	if err := prepared.Prepare(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field  string
		change func(*Input)
	}{
		{"input.source.ip", func(in *Input) { in.Source.IP = "10.0.0.300" }},
		{"input.destination.ip", func(in *Input) { in.Destination.IP = "not an address" }},
		{"input.source.remote_ip", func(in *Input) { in.Source.RemoteIP = "192.0.2" }},
	} {
		in := prepared
		if err := in.Prepare(); err != nil {
			t.Fatalf("prepared again, unchanged: %v", err)
		}
		tc.change(&in)
		err := in.Prepare()
		if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.field+": ") {
			t.Errorf("%s changed to an invalid address after a Prepare: %v, want it refused", tc.field, err)
		}
	}
	in := prepared
	in.Source.IP, in.Source.RemoteIP = "10.0.0.9", ""
	if err := in.Prepare(); err != nil || in.Source.RemoteIP != "10.0.0.9" {
		t.Errorf("a valid new address: %v, remote_ip %q", err, in.Source.RemoteIP)
	}
}

// Header names that differ only in case are one header, whatever the map
// order: the differential test found decisions changing between runs.
func TestPrepareJoinsHeadersDifferingInCase(t *testing.T) {
	for range 20 {
		in := Input{Layer: L7, Request: &Request{Path: "/", Headers: map[string]string{"X-Team": "red", "x-team": "blue", "X-TEAM": "green", "Accept": "*/*"}}}
		if err := in.Prepare(); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"x-team": "green,red,blue", "accept": "*/*"}
		if !maps.Equal(in.Request.Headers, want) {
			t.Fatalf("headers %v, want %v", in.Request.Headers, want)
		}
	}
}

// canonicalToken is textproto's test of a canonical header name, for
// tokens: what Prepare relies on to read HTTPHeader by canonical name.
func FuzzCanonicalToken(f *testing.F) {
	for _, s := range []string{"", "X-Team", "x-team", "X-TEAM", "X-B3-Traceid", "Www-Authenticate", "X Team", "X_team", "-A", "A--B", "Ä", "X-1a", "X-1A"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := httpguts.ValidHeaderFieldName(name) && http.CanonicalHeaderKey(name) == name
		if got := canonicalToken(name); got != want {
			t.Fatalf("canonicalToken(%q) = %v, want %v", name, got, want)
		}
	})
}

// A request's headers given as net/http's http.Header are the document
// of lower-case names, in JSON, in the decision log's copy, and when read
// by name; a name that is not canonical (only from a hand-built header)
// folds with the others as Headers' names do.
func TestHTTPHeaderIsTheHeadersDocument(t *testing.T) {
	for _, c := range []struct {
		name string
		h    http.Header
		want map[string]string
	}{
		{"canonical", http.Header{"X-Team": {"red", "blue"}, "Accept": {"*/*"}, "X-Empty": {""}},
			map[string]string{"x-team": "red,blue", "accept": "*/*", "x-empty": ""}},
		{"not canonical", http.Header{"X-Team": {"red"}, "x-team": {"blue"}, "X-TEAM": {"green"}},
			map[string]string{"x-team": "green,red,blue"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := Input{Layer: L7, Request: &Request{Path: "/", HTTPHeader: c.h}}
			if err := in.Prepare(); err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Request struct {
					Headers map[string]string `json:"headers"`
				} `json:"request"`
			}
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(doc.Request.Headers, c.want) {
				t.Errorf("JSON headers %v, want %v", doc.Request.Headers, c.want)
			}
			if logged := copyInput(in).Request; !maps.Equal(logged.Headers, c.want) || logged.HTTPHeader != nil {
				t.Errorf("the decision log's copy has headers %v and HTTPHeader %v; want %v and none", logged.Headers, logged.HTTPHeader, c.want)
			}
			for _, name := range []string{"x-team", "accept", "x-empty", "X-Team", "x-missing", "x team"} {
				want, wok := c.want[name]
				got, ok := headersGetter([]string{name})(&in)
				if ok != wok || got.s != want {
					t.Errorf("headers[%q] = %q, %v; want %q, %v", name, got.s, ok, want, wok)
				}
			}
			if whole, _ := headersGetter(nil)(&in); !maps.Equal(whole.c.(map[string]string), c.want) {
				t.Errorf("headers = %v, want %v", whole.c, c.want)
			}
		})
	}
}

// NormalizePath's one-pass shortcut answers what the steps it skips
// would: the query cut, then decoding, backslashes and dot segments.
func FuzzNormalizePathShortcut(f *testing.F) {
	for _, s := range []string{"", "*", "/a/b", "/a/b?x=1", "/a/../b?x", "/a%2e/b#f", `/a\b?q`, "?x", "/p?a=/../", "/a.b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		want := raw
		if i := strings.IndexAny(want, "?#"); i >= 0 {
			want = want[:i]
		}
		if want != "" && want != "*" {
			want = removeDotSegments(strings.ReplaceAll(decodeUnreserved(want), `\`, "/"))
		}
		if got := NormalizePath(raw); got != want {
			t.Fatalf("NormalizePath(%q) = %q, want %q", raw, got, want)
		}
	})
}

// The principal memo is bounded and answers right whatever it evicts:
// more principals than it has slots, each asked twice.
func TestPrincipalMemoUnderCollisions(t *testing.T) {
	n := 3 * len(principals.slots)
	for round := range 2 {
		for i := range n {
			p := fmt.Sprintf("spiffe://td%d.example/ns/ns-%d/sa/sa-%d", i%7, i, i)
			id, err := parsePrincipal(p)
			want := identity{trustDomain: fmt.Sprintf("td%d.example", i%7), namespace: fmt.Sprintf("ns-%d", i), serviceAccount: fmt.Sprintf("sa-%d", i)}
			if err != nil || id != want {
				t.Fatalf("round %d: parsePrincipal(%q) = %+v, %v; want %+v", round, p, id, err, want)
			}
		}
	}
	if _, err := parsePrincipal("spiffe://td.example/ns/a/sa/b/"); err == nil {
		t.Error("a principal that is not a SPIFFE ID parsed")
	}
}

// headerKey finds the canonical form of exactly the lower-case tokens.
func FuzzHeaderKey(f *testing.F) {
	for _, s := range []string{"", "x-team", "X-Team", "x team", "x_team", "-a", "a--b", "ä", "x-b3-traceid"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := ""
		if name != "" && strings.ToLower(name) == name && httpguts.ValidHeaderFieldName(name) {
			want = http.CanonicalHeaderKey(name)
		}
		if got := headerKey(name); got != want {
			t.Fatalf("headerKey(%q) = %q, want %q", name, got, want)
		}
	})
}
