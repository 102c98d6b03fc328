package hbone

import (
	"strings"
	"testing"
)

// FuzzParseAuthority: no panic; whatever parses is an IP literal in
// canonical ip:port form, with a port in 1-65535, that parses again to
// itself.
func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.1.0.9:8080", "[fd00::9]:80", "[::ffff:1.2.3.4]:80", "a:1", "1.2.3.4:065535", "[fe80::1%x]:1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() || ap.Addr().IsUnspecified() {
			t.Fatalf("ParseAuthority(%q) accepted %v", s, ap)
		}
		if ap.String() != s {
			// Only IPv6 spellings may differ (e.g. leading zeros in groups).
			if !strings.HasPrefix(s, "[") {
				t.Fatalf("ParseAuthority(%q) = %v: not canonical", s, ap)
			}
		}
		again, err := ParseAuthority(ap.String())
		if err != nil || again != ap {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

// FuzzParseForwarded: no panic; an address that parses formats into a
// header that parses back to it.
func FuzzParseForwarded(f *testing.F) {
	for _, s := range []string{`for="10.1.0.5:40122"`, `for="[fd00::5]:1"`, `for=_x;proto=http, for=1.2.3.4`, `for="\"`, `by=unknown;for=unknown:_p`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseForwarded(s)
		if err != nil || !ap.IsValid() {
			return
		}
		if ap.Addr().Is4In6() || ap.Addr().Zone() != "" {
			t.Fatalf("ParseForwarded(%q) = %v", s, ap)
		}
		again, err := ParseForwarded(FormatForwarded(ap))
		if err != nil || again != ap {
			t.Fatalf("round trip of %v (from %q): %v, %v", ap, s, again, err)
		}
	})
}

// FuzzParseTraceParent: no panic; a valid result is valid and, for
// version 00, formats back to the input.
func FuzzParseTraceParent(f *testing.F) {
	for _, s := range []string{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTraceParent(s)
		if err != nil {
			return
		}
		if !tp.IsValid() {
			t.Fatalf("ParseTraceParent(%q) = invalid %v", s, tp)
		}
		if strings.HasPrefix(s, "00") && tp.String() != s {
			t.Fatalf("ParseTraceParent(%q).String() = %s", s, tp)
		}
		if again, err := ParseTraceParent(tp.String()); err != nil || again != tp {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}
