package bundleserver

import (
	"net/http"
	"testing"
	"time"
)

func TestPreferWait(t *testing.T) {
	tests := []struct {
		name, prefer string
		want         time.Duration
	}{
		{name: "OPA's", prefer: "modes=snapshot,delta;wait=30", want: 30 * time.Second},
		{name: "alone", prefer: "wait=5", want: 5 * time.Second},
		{name: "spaced, another case", prefer: "respond-async, Wait = 7", want: 7 * time.Second},
		{name: "capped", prefer: "wait=3600", want: time.Minute},
		{name: "seconds past time.Duration", prefer: "wait=9223372037", want: time.Minute},
		{name: "none", prefer: "modes=snapshot,delta"},
		{name: "negative", prefer: "wait=-1"},
		{name: "not a number", prefer: "wait=soon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := preferWait(http.Header{"Prefer": {tt.prefer}}, time.Minute); got != tt.want {
				t.Errorf("preferWait(%q) = %v, want %v", tt.prefer, got, tt.want)
			}
		})
	}
}

func TestIfNoneMatch(t *testing.T) {
	tests := []struct {
		name, header, etag string
		want               bool
	}{
		{name: "one", header: `"a"`, etag: `"a"`, want: true},
		{name: "OPA's list", header: `"b", "a"`, etag: `"a"`, want: true},
		{name: "weak", header: `W/"a"`, etag: `"a"`, want: true},
		{name: "any", header: `*`, etag: `"a"`, want: true},
		{name: "other", header: `"b"`, etag: `"a"`},
		{name: "unquoted is another tag", header: `a`, etag: `"a"`},
		{name: "empty", header: ``, etag: `"a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ifNoneMatch(http.Header{"If-None-Match": {tt.header}})(tt.etag); got != tt.want {
				t.Errorf("If-None-Match %q holds %s: %v, want %v", tt.header, tt.etag, got, tt.want)
			}
		})
	}
}

// FuzzHeaders: a client's Prefer and If-None-Match never make the server
// wait longer than its maximum, nor panic.
func FuzzHeaders(f *testing.F) {
	f.Add("modes=snapshot,delta;wait=30", `"a", "b"`)
	f.Add("wait=99999999999999999999", "W/*")
	f.Fuzz(func(t *testing.T, prefer, inm string) {
		h := http.Header{"Prefer": {prefer}, "If-None-Match": {inm}}
		if w := preferWait(h, time.Minute); w < 0 || w > time.Minute {
			t.Fatalf("wait %v for %q", w, prefer)
		}
		ifNoneMatch(h)(`"rev"`)
	})
}
