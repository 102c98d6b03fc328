package hbone

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // "" means refused
	}{
		{"IPv4", "10.1.0.9:8080", "10.1.0.9:8080"},
		{"IPv6", "[fd00::9]:8080", "[fd00::9]:8080"},
		{"IPv6 long form", "[fd00:0:0:0:0:0:0:9]:443", "[fd00::9]:443"},
		{"loopback", "127.0.0.1:1", "127.0.0.1:1"},
		{"highest port", "10.0.0.1:65535", "10.0.0.1:65535"},
		{"port 0", "10.0.0.1:0", ""},
		{"port too large", "10.0.0.1:65536", ""},
		{"port leading zero", "10.0.0.1:080", ""},
		{"port sign", "10.0.0.1:+80", ""},
		{"port not a number", "10.0.0.1:http", ""},
		{"no port", "10.0.0.1", ""},
		{"empty port", "10.0.0.1:", ""},
		{"empty", "", ""},
		{"host name", "example.com:80", ""},
		{"localhost", "localhost:80", ""},
		{"IPv6 without brackets", "fd00::9:8080", ""},
		{"IPv4 in brackets", "[10.0.0.1]:80", ""},
		{"IPv6 zone", "[fe80::1%eth0]:80", ""},
		{"IPv4-mapped IPv6", "[::ffff:10.0.0.1]:80", ""},
		{"unspecified IPv4", "0.0.0.0:80", ""},
		{"unspecified IPv6", "[::]:80", ""},
		{"multicast", "224.0.0.1:80", ""},
		{"IPv4 with leading zeros", "010.1.0.9:80", ""},
		{"path", "10.0.0.1:80/x", ""},
		{"userinfo", "u@10.0.0.1:80", ""},
		{"trailing space", "10.0.0.1:80 ", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAuthority(tc.in)
			if tc.want == "" {
				if err == nil || !errors.Is(err, ErrBadRequest) {
					t.Fatalf("ParseAuthority(%q) = %v, %v; want an ErrBadRequest", tc.in, got, err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("ParseAuthority(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestForwarded(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // AddrPort; "zero" for none; "" for refused
	}{
		{"IPv4 and port", `for="10.1.0.5:40122"`, "10.1.0.5:40122"},
		{"IPv6 and port", `for="[fd00::5]:40122"`, "[fd00::5]:40122"},
		{"IPv4 token", `for=192.0.2.43`, "192.0.2.43:0"},
		{"IPv6 no port", `for="[2001:db8:cafe::17]"`, "[2001:db8:cafe::17]:0"},
		{"case-insensitive name", `For="10.0.0.1:1"`, "10.0.0.1:1"},
		{"first element wins", `for=192.0.2.43, for=198.51.100.17`, "192.0.2.43:0"},
		{"other parameters", `for=192.0.2.60;proto=http;by=203.0.113.43`, "192.0.2.60:0"},
		{"spaces around separators", `proto=http ; for="10.0.0.1:9" , for=10.0.0.2`, "10.0.0.1:9"},
		{"escaped quote pair", `for="\10.0.0.1:9"`, "10.0.0.1:9"},
		{"IPv4-mapped unmapped", `for="[::ffff:10.0.0.1]:9"`, "10.0.0.1:9"},
		{"unknown", `for=unknown`, "zero"},
		{"obfuscated", `for=_hidden`, "zero"},
		{"obfuscated port", `for="10.0.0.1:_p1"`, "10.0.0.1:0"},
		{"no for", `proto=https`, "zero"},
		{"empty", ``, "zero"},
		{"for in second element only", `proto=http, for=10.0.0.1`, "zero"},
		{"IPv4 port unquoted", `for=10.0.0.1:80`, ""},
		{"IPv6 unbracketed", `for="fd00::5"`, ""},
		{"unclosed bracket", `for="[fd00::5"`, ""},
		{"text after bracket", `for="[fd00::5]x"`, ""},
		{"host name", `for=example.com`, ""},
		{"port 0", `for="10.0.0.1:0"`, ""},
		{"repeated for", `for=10.0.0.1;for=10.0.0.2`, ""},
		{"unterminated quote", `for="10.0.0.1`, ""},
		{"missing value", `for=`, ""},
		{"missing name", `=10.0.0.1`, ""},
		{"trailing comma", `for=10.0.0.1,`, ""},
		{"control byte", "for=\"10.0.0.1\x01\"", ""},
		{"garbage", `for=10.0.0.1 junk`, ""},
		{"bad obfuscated", `for=_`, ""},
		{"zone", `for="[fe80::1%25eth0]"`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseForwarded(tc.in)
			switch tc.want {
			case "":
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("ParseForwarded(%q) = %v, %v; want an ErrBadRequest", tc.in, got, err)
				}
			case "zero":
				if err != nil || got.IsValid() {
					t.Fatalf("ParseForwarded(%q) = %v, %v; want no address", tc.in, got, err)
				}
			default:
				if err != nil || got.String() != tc.want {
					t.Fatalf("ParseForwarded(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
				}
			}
		})
	}
}

func TestFormatForwarded(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.0.5:40122":           `for="10.1.0.5:40122"`,
		"[::1]:80":                 `for="[::1]:80"`,
		"[::ffff:10.1.0.5]:1":      `for="10.1.0.5:1"`,
		"10.1.0.5:0":               `for="10.1.0.5"`,
		"[2001:db8:cafe::17]:4711": `for="[2001:db8:cafe::17]:4711"`,
	} {
		if got := FormatForwarded(netip.MustParseAddrPort(in)); got != want {
			t.Errorf("FormatForwarded(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestTraceParent(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"W3C example", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"future version with more fields", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds", true},
		{"future version exact", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"version 00 with more fields", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", false},
		{"future version, no dash after flags", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", false},
		{"upper case", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"zero trace ID", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"zero parent ID", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", false},
		{"bad separator", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"not hex", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := ParseTraceParent(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseTraceParent(%q) = %v, %v; want ok=%v", tc.in, tp, err, tc.ok)
			}
			if tc.ok && len(tc.in) == 55 && tc.in[:2] == "00" && tp.String() != tc.in {
				t.Errorf("String() = %s, want %s", tp, tc.in)
			}
		})
	}
	if tp := NewTraceParent(); !tp.IsValid() {
		t.Errorf("NewTraceParent() = %v is invalid", tp)
	}
}
