package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	frontendSource = `{"principal": "spiffe://cluster.local/ns/shop/sa/frontend", "ip": "10.1.0.7"}`
	apiSource      = `{"principal": "spiffe://cluster.local/ns/shop/sa/api", "ip": "10.1.0.5"}`
	postgresDest   = `{"ip": "10.1.0.20", "port": 5432, "namespace": "shop", "workload": "postgres-0", "service_account": "postgres", "labels": {"app": "postgres"}}`
)

// TestInputDocumentIsStrict feeds documents that encoding/json alone would
// decide as another connection, or that are broken: each is refused with
// a JSON error saying where.
func TestInputDocumentIsStrict(t *testing.T) {
	truncated, err := os.ReadFile(filepath.Join("..", inputs, "api-to-postgres-allowed.json"))
	if err != nil {
		t.Fatal(err)
	}
	truncated = truncated[:len(truncated)/2]
	tests := []struct {
		name   string
		stdin  string
		stderr []string
	}{
		{
			name:   "a second source wins today: frontend (denied) then api (allowed)",
			stdin:  `{"layer": "l4", "source": ` + frontendSource + `, "destination": ` + postgresDest + `, "connection": {"mtls": true}, "source": ` + apiSource + `}`,
			stderr: []string{`input -: JSON: input: key "source" appears twice, again at line 1 column`, "remove one"},
		},
		{
			name:   "a key in another case",
			stdin:  `{"layer": "l4", "source": ` + frontendSource + `, "destination": ` + postgresDest + `, "connection": {"mtls": true}, "Source": ` + apiSource + `}`,
			stderr: []string{`JSON: input: key "Source" appears twice (as "source" and "Source": keys match fields regardless of case)`},
		},
		{
			name:   "a nested duplicate",
			stdin:  "{\"layer\": \"l4\", \"source\": " + apiSource + ",\n \"destination\": {\"port\": 5433, \"labels\": {\"app\": \"postgres\"},\n  \"port\": 5432}, \"connection\": {\"mtls\": true}}",
			stderr: []string{`JSON: input.destination: key "port" appears twice, again at line 3 column 9`},
		},
		{
			name:   "a duplicate deep in the claims",
			stdin:  `{"layer": "l7", "destination": {"port": 80}, "request": {"method": "GET", "path": "/", "auth": {"claims": {"groups": {"admin": false, "admin": true}}}}}`,
			stderr: []string{`JSON: input.request.auth.claims.groups: key "admin" appears twice`},
		},
		{
			name:   "a duplicate in YAML",
			stdin:  "layer: l4\nsource: {principal: spiffe://cluster.local/ns/shop/sa/frontend}\ndestination: {port: 5432}\nsource: {principal: spiffe://cluster.local/ns/shop/sa/api}\n",
			stderr: []string{`YAML:`, `"source" already set`},
		},
		{
			name:   "truncated JSON",
			stdin:  string(truncated),
			stderr: []string{"input -: JSON ends early at line 12 column", "the document is truncated"},
		},
		{
			name:   "a JSON syntax error",
			stdin:  "{\"layer\": \"l4\",\n \"destination\": {\"port\": 5432} \"connection\": {}}",
			stderr: []string{"input -: JSON syntax error at line 2 column 32: invalid character '\"' after object key:value pair"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runBinary(t, tt.stdin, "policy", "check", "--bundle", examples, "-i", "-")
			if code != ExitError {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, ExitError, stdout, stderr)
			}
			for _, want := range tt.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q does not mention %q", stderr, want)
				}
			}
		})
	}
}

// TestInputDocumentsStillRead: case-sensitive maps keep keys that differ
// in case, and YAML flow style still reads.
func TestInputDocumentsStillRead(t *testing.T) {
	tests := []struct {
		name, stdin string
		code        int
	}{
		{"labels differing in case", `{"layer": "l4", "source": ` + apiSource + `, "destination": {"ip": "10.1.0.20", "port": 5432, "labels": {"app": "postgres", "App": "x"}}, "connection": {"mtls": true}}`, ExitAllowed},
		{"YAML flow style", `{layer: l4, destination: {port: 5432, labels: {app: postgres}}}`, ExitDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := runBinary(t, tt.stdin, "policy", "check", "--bundle", examples, "-i", "-")
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
		})
	}
}

func TestInputSizeIsCapped(t *testing.T) {
	big := fmt.Sprintf(`{"layer": "l7", "source": %s, "destination": {"port": 8080}, "connection": {"mtls": true}, "request": {"method": "GET", "path": "/", "headers": {"x-pad": %q}}}`,
		apiSource, strings.Repeat("a", 2<<20))
	path := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(path, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runBinary(t, "", "policy", "check", "--bundle", examples, "-i", path)
	if code != ExitError || !strings.Contains(stderr, path+" is larger than --max-input-bytes (1048576 bytes)") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 naming --max-input-bytes", code, stdout, stderr)
	}
	_, stderr, code = runBinary(t, big, "policy", "check", "--bundle", examples, "-i", "-")
	if code != ExitError || !strings.Contains(stderr, "stdin is larger than --max-input-bytes") {
		t.Fatalf("stdin: exit %d, stderr %q; want exit 1 naming --max-input-bytes", code, stderr)
	}
	stdout, stderr, code = runBinary(t, "", "policy", "check", "--bundle", examples, "-i", path, "--max-input-bytes", "4194304")
	if code != ExitAllowed {
		t.Fatalf("with --max-input-bytes 4194304: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// FuzzInputJSON: any bytes give JSON without a repeated key, or an error.
func FuzzInputJSON(f *testing.F) {
	f.Add([]byte(`{"layer": "l4", "source": {"ip": "10.0.0.1"}, "source": {}}`))
	f.Add([]byte("layer: l4\ndestination: {port: 80}\n"))
	f.Add([]byte(`{"a": [1, {"b": 2, "B": 3}]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		js, err := inputJSON(raw)
		if err != nil {
			return
		}
		if err := checkInputJSON(js); err != nil {
			t.Fatalf("inputJSON(%q) = %q, which does not check: %v", raw, js, err)
		}
	})
}
