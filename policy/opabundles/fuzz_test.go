package opabundles

import "testing"

// FuzzParseConfig: whatever the file holds, ParseConfig returns an error
// or a configuration with at least one bundle, each with a service the
// file defines; it never panics.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		"services: {s: {url: 'http://a'}}\nbundles: {a: {}}\n",
		`{"services": [{"name": "s", "url": "http://a"}], "bundles": {"a": {"signing": {"keyid": "k"}}}, "keys": {"k": {"key": "x"}}}`,
		"bundles: {a: {resource: 'file:///x'}}\n",
		"services: {s: {url: 'http://a', credentials: {bearer: {token: '${T}'}}}}\nbundles: {a: {polling: {min_delay_seconds: 1, max_delay_seconds: 2}}}\n",
		"discovery: {}\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := ParseConfig(raw)
		if err != nil {
			return
		}
		if len(cfg.Bundles) == 0 {
			t.Fatalf("no error and no bundle for %q", raw)
		}
		for name, b := range cfg.Bundles {
			if _, ok := cfg.services[b.Service]; !ok {
				t.Fatalf("bundle %q names service %q, which %q does not define", name, b.Service, raw)
			}
		}
	})
}
