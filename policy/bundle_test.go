package policy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// bundleFixture is the path of a static bundle under testdata/bundles.
func bundleFixture(name string) string {
	return filepath.Join("testdata", "bundles", name)
}

// tarBundleDir packs a bundle directory as a .tar.gz in a temporary directory,
// as `tar czf NAME.tar.gz -C dir .` would, and returns its path.
func tarBundleDir(t *testing.T, dir string) string {
	t.Helper()
	archive, err := tarGz(dir)
	if err != nil {
		t.Fatal(err)
	}
	return writeTempFile(t, filepath.Base(dir)+".tar.gz", archive)
}

// tarGz packs the files under dir, named "/<path relative to dir>".
func tarGz(dir string) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr := &tar.Header{Name: "/" + filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(src)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(src)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// copyBundleDir copies a fixture bundle directory into a temporary directory.
func copyBundleDir(t *testing.T, dir string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(dir))
	if err := os.CopyFS(dst, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeTempFile(t *testing.T, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildOPABundle builds a bundle in memory, as opa build would, from Rego
// sources by file name (e.g. "/p.rego"); data is the root data document.
func buildOPABundle(t *testing.T, revision string, roots []string, data map[string]any, sources map[string]string) bundle.Bundle {
	t.Helper()
	b := bundle.Bundle{Manifest: bundle.Manifest{Revision: revision, Roots: &roots}, Data: data}
	if b.Data == nil {
		b.Data = map[string]any{}
	}
	for name, src := range sources {
		b.Modules = append(b.Modules, parsedModuleFile(t, name, src))
	}
	return b
}

func parsedModuleFile(t *testing.T, name, src string) bundle.ModuleFile {
	t.Helper()
	m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	return bundle.ModuleFile{URL: name, Path: name, Raw: []byte(src), Parsed: m}
}

// writeOPABundle writes b as a .tar.gz with OPA's bundle writer.
func writeOPABundle(t *testing.T, name string, b bundle.Bundle) string {
	t.Helper()
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).DisableFormat(true).Write(b); err != nil {
		t.Fatal(err)
	}
	return writeTempFile(t, name, buf.Bytes())
}

// signOPABundle signs b as opa build --signing-key does; keyID may be empty.
func signOPABundle(t *testing.T, b *bundle.Bundle, privateKey, alg, keyID string) {
	t.Helper()
	if err := b.GenerateSignature(bundle.NewSigningConfig(privateKey, alg, ""), keyID, false); err != nil {
		t.Fatal(err)
	}
}

// signBundleDir writes dir/.signatures.json as `opa sign --bundle dir` does: file
// names are the directory path as given joined with the file's path.
func signBundleDir(t *testing.T, dir, privateKey, alg, keyID string) {
	t.Helper()
	hasher, err := bundle.NewSignatureHasher(bundle.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var files []bundle.FileInfo
	loader := bundle.NewDirectoryLoader(dir)
	for {
		f, err := loader.NextFile()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if bundle.IsSignaturesFile(f.Path()) {
			continue
		}
		files = append(files, hashBundleFile(t, hasher, f))
	}
	token, err := bundle.GenerateSignedToken(files, bundle.NewSigningConfig(privateKey, alg, ""), keyID)
	if err != nil {
		t.Fatal(err)
	}
	sigs, _ := json.Marshal(map[string][]string{"signatures": {token}})
	if err := os.WriteFile(filepath.Join(dir, ".signatures.json"), sigs, 0o644); err != nil {
		t.Fatal(err)
	}
}

func hashBundleFile(t *testing.T, hasher bundle.SignatureHasher, f *bundle.Descriptor) bundle.FileInfo {
	t.Helper()
	var buf bytes.Buffer
	if _, err := f.Read(&buf, 1<<20); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	f.Close()
	var value any = buf.Bytes()
	if bundle.IsStructuredDoc(f.URL()) {
		if err := json.Unmarshal(buf.Bytes(), &value); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := hasher.HashFile(value)
	if err != nil {
		t.Fatal(err)
	}
	return bundle.NewFile(strings.TrimPrefix(f.URL(), "/"), hex.EncodeToString(sum), string(bundle.SHA256))
}

// signingKeys is a PEM private key and its PEM public key.
type signingKeys struct{ private, public string }

func newRSAKeys(t *testing.T) signingKeys {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return pemKeys(t, k, &k.PublicKey)
}

func newECKeys(t *testing.T) signingKeys {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pemKeys(t, k, &k.PublicKey)
}

func pemKeys(t *testing.T, private, public any) signingKeys {
	t.Helper()
	priv, err := x509.MarshalPKCS8PrivateKey(private)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(public)
	if err != nil {
		t.Fatal(err)
	}
	return signingKeys{
		private: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv})),
		public:  string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})),
	}
}

// checkBundleErr fails t unless err matches: every sentinel in is, none in isNot,
// and every string in text.
func checkBundleErr(t *testing.T, err error, is, isNot []error, text []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", text)
	}
	t.Logf("error: %v", err)
	for _, target := range is {
		if !errors.Is(err, target) {
			t.Errorf("error %q does not wrap %q", err, target)
		}
	}
	for _, target := range isNot {
		if errors.Is(err, target) {
			t.Errorf("error %q wraps %q, want not", err, target)
		}
	}
	for _, s := range text {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestReadBundle(t *testing.T) {
	webTarball := tarBundleDir(t, bundleFixture("web"))
	tests := []struct {
		name      string
		path      string
		revision  string
		roots     []string
		modules   int
		dataPath  []string // a data document the bundle holds
		dataValue string   // its JSON
	}{
		{
			name: "directory", path: bundleFixture("web"), revision: "web-1", roots: []string{"mesh/policies/web"}, modules: 1,
			dataPath: []string{"mesh", "policies", "web", "config", "namespaces"}, dataValue: `["shop","checkout"]`,
		},
		{
			name: "tar.gz", path: webTarball, revision: "web-1", roots: []string{"mesh/policies/web"}, modules: 1,
			dataPath: []string{"mesh", "policies", "web", "config", "namespaces"}, dataValue: `["shop","checkout"]`,
		},
		{
			name: "without manifest owns every root", path: bundleFixture("no-manifest"), revision: "", roots: []string{""}, modules: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ReadBundle(tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if b.Name != tt.path || b.Revision != tt.revision || strings.Join(b.Roots, ",") != strings.Join(tt.roots, ",") {
				t.Errorf("got name %q revision %q roots %q, want %q %q %q", b.Name, b.Revision, b.Roots, tt.path, tt.revision, tt.roots)
			}
			if len(b.raw.Modules) != tt.modules {
				t.Errorf("got %d modules, want %d", len(b.raw.Modules), tt.modules)
			}
			if tt.dataPath != nil {
				if got := jsonAtPath(t, b.raw.Data, tt.dataPath); got != tt.dataValue {
					t.Errorf("data at %v = %s, want %s", tt.dataPath, got, tt.dataValue)
				}
			}
		})
	}
}

// jsonAtPath renders the document at path in data as JSON ("" when absent).
func jsonAtPath(t *testing.T, data map[string]any, path []string) string {
	t.Helper()
	var doc any = data
	for _, key := range path {
		obj, ok := doc.(map[string]any)
		if !ok {
			return ""
		}
		if doc, ok = obj[key]; !ok {
			return ""
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// hugeClaim is a tiny .tar.gz whose one header claims a 2 GiB file.
func hugeClaim(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "/data.json", Size: 2 << 30, Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = tw.Flush() // the archive is truncated on purpose
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return writeTempFile(t, "huge.tar.gz", buf.Bytes())
}

func TestReadBundleRejects(t *testing.T) {
	parseTarball := tarBundleDir(t, bundleFixture("parse-error"))
	huge := hugeClaim(t)
	tests := []struct {
		name string
		path string
		text []string
	}{
		{
			name: "parse error in a directory names file:line",
			path: bundleFixture("parse-error"),
			text: []string{bundleFixture("parse-error") + ": ", filepath.Join(bundleFixture("parse-error"), "broken.rego") + ":4: rego_parse_error", "fix the Rego"},
		},
		{
			name: "parse error in a tar.gz names archive/file:line",
			path: parseTarball,
			text: []string{parseTarball + ": ", parseTarball + "/broken.rego:4: rego_parse_error"},
		},
		{
			name: "module outside its roots",
			path: bundleFixture("outside-roots"),
			text: []string{"manifest roots [mesh/policies/x] do not permit", "stray.rego", ".manifest"},
		},
		{
			name: "data outside its roots",
			path: bundleFixture("data-outside-roots"),
			text: []string{"manifest roots [mesh/policies/x] do not permit data at path '/other"},
		},
		{
			name: "package mesh.authz",
			path: bundleFixture("library-package"),
			text: []string{"bundle " + bundleFixture("library-package") + ": ", "override.rego:1: declares package mesh.authz", libraryHint},
		},
		{
			name: "rule in mesh.authz from package mesh",
			path: bundleFixture("library-rule"),
			text: []string{"ref.rego:4: defines data.mesh.authz.extra", libraryHint},
		},
		{
			name: "data under mesh/authz",
			path: bundleFixture("library-data"),
			text: []string{"has data at mesh/authz", libraryHint},
		},
		{
			name: "root inside mesh/authz",
			path: bundleFixture("library-root"),
			text: []string{`declares .manifest root "mesh/authz/extra"`, libraryHint},
		},
		{
			name: "delta bundle",
			path: bundleFixture("delta"),
			text: []string{"is a delta bundle (patch.json)", "serve snapshot bundles"},
		},
		{
			name: "tar header claiming more than the size limit",
			path: huge,
			text: []string{"/data.json size (2147483648 bytes) exceeds configured size_limit_bytes"},
		},
		{
			name: "missing path",
			path: bundleFixture("no-such-bundle"),
			text: []string{"no-such-bundle", "no such file", "check the bundle path"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadBundle(tt.path, nil)
			checkBundleErr(t, err, []error{ErrBundle}, []error{ErrSignature}, append(tt.text, "policy: bundle "+tt.path))
		})
	}
}

func TestReadBundleParseErrorKeepsASTErrors(t *testing.T) {
	_, err := ReadBundle(bundleFixture("parse-error"), nil)
	var errs ast.Errors
	if !errors.As(err, &errs) || len(errs) == 0 || errs[0].Location.Row != 4 {
		t.Fatalf("got %v, want OPA's ast errors reachable with errors.As, first at row 4", err)
	}
}

// signedBundleCase builds a bundle for TestSignedBundle and returns its path.
type signedBundleCase func(t *testing.T) string

// signedCase is a signed (or unsigned) bundle and the verification it is
// read with; text is empty when the bundle must verify.
type signedCase struct {
	name  string
	build signedBundleCase
	v     *Verification
	// vFor, when set, is the verification for the path build returned.
	vFor  func(path string) *Verification
	text  []string
	isNot error // a sentinel the error must not wrap
}

func (c signedCase) verification(path string) *Verification {
	if c.vFor != nil {
		return c.vFor(path)
	}
	return c.v
}

func TestSignedBundle(t *testing.T) {
	for _, tt := range signedCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.build(t)
			b, err := ReadBundle(path, tt.verification(path))
			if tt.text == nil {
				if err != nil {
					t.Fatalf("got %v, want the bundle to verify", err)
				}
				if len(b.raw.Modules) == 0 {
					t.Error("verified bundle has no modules")
				}
				return
			}
			is, isNot := []error{ErrBundle, ErrSignature}, []error(nil)
			if tt.isNot != nil {
				is, isNot = []error{ErrBundle}, []error{tt.isNot}
			}
			checkBundleErr(t, err, is, isNot, append(tt.text, "policy: bundle "+path+": "))
		})
	}
}

// signedCases are TestSignedBundle's bundles, which
// TestSignedReadEqualsOPAReader reads with OPA's reader too.
func signedCases(t *testing.T) []signedCase {
	rsaKey, otherKey, ecKey := newRSAKeys(t), newRSAKeys(t), newECKeys(t)
	const secret = "correct horse battery staple"
	src := map[string]string{"/p.rego": "package mesh.policies.signed.p\n\nallow contains {\"policy\": \"signed/p\", \"rule\": \"0\"} if true\n"}
	data := map[string]any{"mesh": map[string]any{"policies": map[string]any{"signed": map[string]any{"config": map[string]any{"on": true}}}}}
	roots := []string{"mesh/policies/signed"}

	// tarball writes the signed bundle, after tamper if given.
	tarball := func(key, alg, keyID string, tamper func(*bundle.Bundle)) signedBundleCase {
		return func(t *testing.T) string {
			b := buildOPABundle(t, "signed-1", roots, data, src)
			if key != "" {
				signOPABundle(t, &b, key, alg, keyID)
			}
			if tamper != nil {
				tamper(&b)
			}
			return writeOPABundle(t, "signed.tar.gz", b)
		}
	}
	// directory copies the web fixture and signs it as opa sign does, then
	// applies tamper to the directory.
	directory := func(key, alg, keyID string, tamper func(t *testing.T, dir string)) signedBundleCase {
		return func(t *testing.T) string {
			dir := copyBundleDir(t, bundleFixture("web"))
			signBundleDir(t, dir, key, alg, keyID)
			if tamper != nil {
				tamper(t, dir)
			}
			return dir
		}
	}
	tamperModule := func(b *bundle.Bundle) {
		b.Modules[0] = parsedModuleFile(t, "/p.rego", src["/p.rego"]+"\nallow contains {\"policy\": \"evil\", \"rule\": \"0\"} if true\n")
	}
	tamperData := func(b *bundle.Bundle) {
		b.Data = map[string]any{"mesh": map[string]any{"policies": map[string]any{"signed": map[string]any{"config": map[string]any{"on": false}}}}}
	}
	breakModule := func(b *bundle.Bundle) {
		b.Modules[0].Raw = []byte("package mesh.policies.signed.p\n\nallow contains if {\n")
	}
	appendToFile := func(t *testing.T, dir string) {
		f, err := os.OpenFile(filepath.Join(dir, "frontend.rego"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString("\nallow contains {\"policy\": \"evil\", \"rule\": \"0\"} if true\n"); err != nil {
			t.Fatal(err)
		}
	}
	keys := func(id string, k VerificationKey) *Verification {
		return &Verification{Keys: map[string]VerificationKey{id: k}}
	}
	rsaMain := keys("main", VerificationKey{Key: rsaKey.public}) // RS256 by default

	return []signedCase{
		{name: "RS256 tar.gz verifies", build: tarball(rsaKey.private, "RS256", "main", nil), v: rsaMain},
		{name: "ES256 tar.gz verifies", build: tarball(ecKey.private, "ES256", "main", nil),
			v: keys("main", VerificationKey{Algorithm: "ES256", Key: ecKey.public})},
		{name: "HS256 secret verifies", build: tarball(secret, "HS256", "main", nil),
			v: keys("main", VerificationKey{Algorithm: "HS256", Key: secret})},
		{name: "directory signed as opa sign does verifies", build: directory(rsaKey.private, "RS256", "main", nil), v: rsaMain},
		{name: "configured key ID verifies a signature naming none", build: tarball(rsaKey.private, "RS256", "", nil),
			v: &Verification{Keys: rsaMain.Keys, KeyID: "main"}},
		{name: "excluded file may change", build: tarball(rsaKey.private, "RS256", "main", tamperModule),
			v: &Verification{Keys: rsaMain.Keys, Exclude: []string{"p.rego"}}},
		{name: "unsigned bundle without keys is accepted", build: tarball("", "", "", nil), v: nil},
		{
			name: "tampered module", build: tarball(rsaKey.private, "RS256", "main", tamperModule), v: rsaMain,
			text: []string{"p.rego: digest mismatch", "no file changed after signing"},
		},
		{
			name: "tampered data", build: tarball(rsaKey.private, "RS256", "main", tamperData), v: rsaMain,
			text: []string{"data.json: digest mismatch"},
		},
		{
			name: "tampered directory file", build: directory(rsaKey.private, "RS256", "main", appendToFile), v: rsaMain,
			text: []string{"frontend.rego: digest mismatch", "opa sign --bundle"},
		},
		{
			name: "wrong key", build: tarball(otherKey.private, "RS256", "main", nil), v: rsaMain,
			text: []string{"failed to verify JWT signature", "configured keys (main)"},
		},
		{
			name: "wrong algorithm", build: tarball(ecKey.private, "ES256", "main", nil),
			v:    keys("main", VerificationKey{Algorithm: "ES384", Key: ecKey.public}),
			text: []string{"failed to verify JWT signature"},
		},
		{
			name: "unknown key ID", build: tarball(rsaKey.private, "RS256", "retired", nil), v: rsaMain,
			text: []string{"verification key corresponding to ID retired not found"},
		},
		{
			name: "signature naming no key without a configured key ID", build: tarball(rsaKey.private, "RS256", "", nil), v: rsaMain,
			text: []string{"verification key ID is empty", "Verification.KeyID"},
		},
		{
			name: "scope mismatch", build: tarball(rsaKey.private, "RS256", "main", nil),
			v:    &Verification{Keys: rsaMain.Keys, Scope: "prod"},
			text: []string{"scope mismatch"},
		},
		{
			name: "missing signature with keys configured", build: tarball("", "", "", nil), v: rsaMain,
			text: []string{"bundle missing .signatures.json file"},
		},
		{
			name: "signed bundle without keys configured", build: tarball(rsaKey.private, "RS256", "main", nil), v: nil,
			text: []string{"signed (.signatures.json) but no verification key is configured", "configure the verification key"},
		},
		{
			name: "signed bundle with an empty verification", build: tarball(rsaKey.private, "RS256", "main", nil), v: &Verification{},
			text: []string{"configure the verification key"},
		},
		{
			name: "signed directory without keys configured", build: directory(rsaKey.private, "RS256", "main", nil), v: nil,
			text: []string{"configure the verification key"},
		},
		{
			name: "unreadable content is reported before its signature", build: tarball(rsaKey.private, "RS256", "main", breakModule), v: rsaMain,
			text: []string{"/p.rego:3: rego_parse_error"}, isNot: ErrSignature,
		},
		{
			name: "file added after signing", build: directory(rsaKey.private, "RS256", "main", addFile("extra.rego", "package mesh.policies.web.extra\n")), v: rsaMain,
			text: []string{"extra.rego not included in bundle signature"},
		},
		{
			name: "file removed after signing", build: directory(rsaKey.private, "RS256", "main", removeFile("frontend.rego")), v: rsaMain,
			text: []string{"frontend.rego] specified in bundle signatures but not found in the target bundle"},
		},
		{
			name: "two signatures files", build: directory(rsaKey.private, "RS256", "main", copySignatures("sub/.signatures.json")), v: rsaMain,
			text: []string{"bundle contains multiple signatures files"},
		},
		{
			name: "signatures file not JSON", build: directory(rsaKey.private, "RS256", "main", addFile(".signatures.json", "{")), v: rsaMain,
			text: []string{"bundle load failed on signatures decode"},
		},
		{
			name: "excluded file removed", build: directory(rsaKey.private, "RS256", "main", removeFile("frontend.rego")),
			v:    &Verification{Keys: rsaMain.Keys, Exclude: []string{"*/frontend.rego"}},
			text: []string{"frontend.rego] specified in bundle signatures but not found"},
		},
		{
			name: "data file added after signing", build: directory(rsaKey.private, "RS256", "main", addFile("mesh/policies/web/extra/data.json", `{"x": 1}`)), v: rsaMain,
			text: []string{"mesh/policies/web/extra/data.json not included in bundle signature"},
		},
		{
			// A directory's files are named by the directory path as given:
			// the pattern is frontend.rego's whole path.
			name: "excluded directory file may change", build: directory(rsaKey.private, "RS256", "main", appendToFile),
			vFor: func(dir string) *Verification {
				return &Verification{Keys: rsaMain.Keys, Exclude: []string{strings.TrimPrefix(filepath.Join(dir, "frontend.rego"), "/")}}
			},
		},
	}
}

// addFile writes name (under the bundle directory) after signing.
func addFile(name, content string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// removeFile removes name from the bundle directory after signing.
func removeFile(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// copySignatures copies the directory's .signatures.json to name.
func copySignatures(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		sigs, err := os.ReadFile(filepath.Join(dir, ".signatures.json"))
		if err != nil {
			t.Fatal(err)
		}
		addFile(name, string(sigs))(t, dir)
	}
}

// TestSignedReadEqualsOPAReader: a signed bundle read with fastParse
// taking modules, and verified in the reader's place (bundle_fastread.go),
// is accepted or refused as OPA's reader alone, verifying, accepts or
// refuses it, with the reader's message (both check a bundle's signature
// before they parse it), and an accepted one holds what the reader makes
// of it. A signed bundle of
// translated modules is read on the fast path.
func TestSignedReadEqualsOPAReader(t *testing.T) {
	cases := signedCases(t)
	rsaKey := newRSAKeys(t)
	rsaMain := &Verification{Keys: map[string]VerificationKey{"main": {Key: rsaKey.public}}}
	modules := translatedDenies(t, 10)
	translated := func(t *testing.T) string {
		files := map[string]string{".manifest": `{"revision": "t", "roots": ["mesh/policies/istio"]}`}
		maps.Copy(files, modules)
		dir := writeBundle(t, t.TempDir(), files)
		signBundleDir(t, dir, rsaKey.private, "RS256", "main")
		return dir
	}
	cases = append(cases,
		signedCase{name: "translated modules", build: translated, v: rsaMain},
		signedCase{name: "translated modules as tar.gz", build: func(t *testing.T) string { return tarBundleDir(t, translated(t)) }, v: rsaMain},
	)
	fastPath := 0
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.build(t)
			src, err := statBundleSource(path)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := tt.verification(path).opaConfig()
			if err != nil {
				t.Fatal(err)
			}
			ours, lazy, err := src.read(cfg, false)
			opa, opaErr := opaVerifiedRead(src, cfg)
			if (err == nil) != (opaErr == nil) {
				t.Fatalf("read: %v; OPA's reader: %v", err, opaErr)
			}
			if err != nil {
				// Both verify before they parse: the same first failure.
				if !strings.Contains(err.Error(), "file(s) [") && err.Error() != opaErr.Error() {
					t.Fatalf("read: %v; OPA's reader: %v", err, opaErr)
				}
				return
			}
			if lazy != nil {
				fastPath++
			}
			if ours.Manifest.Revision != opa.Manifest.Revision || !reflect.DeepEqual(ours.Data, opa.Data) || len(ours.Modules) != len(opa.Modules) {
				t.Fatalf("revision %q, data %v, %d modules; OPA's reader %q, %v, %d", ours.Manifest.Revision, ours.Data, len(ours.Modules), opa.Manifest.Revision, opa.Data, len(opa.Modules))
			}
			for i, mf := range ours.Modules {
				if want := opa.Modules[i]; mf.Path != want.Path || !bytes.Equal(mf.Raw, want.Raw) {
					t.Fatalf("module %d is %s, OPA's reader %s", i, mf.Path, want.Path)
				}
			}
		})
	}
	if fastPath < 2 {
		t.Errorf("%d signed bundles read on the fast path; want the translated ones at least", fastPath)
	}
}

// opaVerifiedRead reads src with OPA's reader alone, verifying with cfg,
// configured as bundleSource.read configures it.
func opaVerifiedRead(src bundleSource, cfg *bundle.VerificationConfig) (*bundle.Bundle, error) {
	loader, closer, err := src.loader()
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	r := bundle.NewCustomReader(loader).WithBundleVerificationConfig(cfg).
		WithRegoVersion(ast.RegoV1).WithProcessAnnotations(true).WithBundleName(src.path)
	if src.dir {
		r = r.WithBaseDir(src.path)
	}
	b, err := r.Read()
	return &b, err
}

func TestVerificationConfigRejected(t *testing.T) {
	rsaKey := newRSAKeys(t)
	tests := []struct {
		name string
		v    *Verification
		text string
	}{
		{"key ID not among the keys", &Verification{Keys: map[string]VerificationKey{"a": {Key: rsaKey.public}, "b": {Key: rsaKey.public}}, KeyID: "c"},
			`key ID "c" is not among the configured keys (a, b)`},
		{"key ID without keys", &Verification{KeyID: "c"}, `key ID "c" is set but no verification key is configured`},
		{"unsupported algorithm", &Verification{Keys: map[string]VerificationKey{"a": {Algorithm: "EdDSA", Key: rsaKey.public}}},
			`verification key "a": unsupported algorithm "EdDSA"`},
		{"private key", &Verification{Keys: map[string]VerificationKey{"a": {Key: rsaKey.private}}},
			"configure the public key instead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadBundle(bundleFixture("web"), tt.v)
			checkBundleErr(t, err, []error{ErrBundle, ErrSignature}, nil, []string{tt.text, "bundle " + bundleFixture("web"), "check the verification keys"})
		})
	}
}

func TestReadVerificationKey(t *testing.T) {
	rsaKey, ecKey := newRSAKeys(t), newECKeys(t)
	rsaPub, err := parsePublicKey(rsaKey.public)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(rsaPub.(*rsa.PublicKey))}))
	cert := selfSignedCertPEM(t)
	tests := []struct {
		name      string
		content   string
		algorithm string
		want      VerificationKey // zero when an error is expected
		text      string
	}{
		{name: "PKIX RSA key defaults to RS256", content: rsaKey.public, want: VerificationKey{Algorithm: "RS256", Key: rsaKey.public}},
		{name: "PKCS#1 RSA key", content: pkcs1, algorithm: "PS256", want: VerificationKey{Algorithm: "PS256", Key: pkcs1}},
		{name: "ECDSA key", content: ecKey.public, algorithm: "ES256", want: VerificationKey{Algorithm: "ES256", Key: ecKey.public}},
		{name: "certificate", content: cert, algorithm: "ES256", want: VerificationKey{Algorithm: "ES256", Key: cert}},
		{name: "HMAC secret is kept byte for byte", content: "s3cret\n", algorithm: "HS256", want: VerificationKey{Algorithm: "HS256", Key: "s3cret\n"}},
		{name: "private key", content: rsaKey.private, text: "the PEM block is a PRIVATE KEY: configure the public key instead"},
		{name: "ECDSA key for RS256", content: ecKey.public, algorithm: "RS256", text: "algorithm RS256 needs an RSA public key"},
		{name: "RSA key for ES256", content: rsaKey.public, algorithm: "ES256", text: "algorithm ES256 needs an ECDSA public key"},
		{name: "not PEM", content: "hello", text: "no PEM block found"},
		{name: "empty secret", content: "", algorithm: "HS256", text: "the key is empty"},
		{name: "unsupported algorithm", content: rsaKey.public, algorithm: "none", text: `unsupported algorithm "none"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTempFile(t, "key.pem", []byte(tt.content))
			got, err := ReadVerificationKey(path, tt.algorithm)
			if tt.text != "" {
				checkBundleErr(t, err, nil, nil, []string{"policy: verification key " + path + ": ", tt.text})
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := ReadVerificationKey(filepath.Join(t.TempDir(), "absent.pem"), "")
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "absent.pem") {
			t.Errorf("got %v, want a not-exist error naming the file", err)
		}
	})
}

// selfSignedCertPEM returns a PEM certificate for a fresh ECDSA key.
func selfSignedCertPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bundle signer"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// FuzzReadBundle feeds arbitrary bytes to ReadBundle as a .tar.gz: it must
// never panic, and every failure must wrap ErrBundle.
func FuzzReadBundle(f *testing.F) {
	web, err := tarGz(bundleFixture("web"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(web)
	f.Add([]byte{0x1f, 0x8b})
	f.Add([]byte("not a bundle"))
	f.Fuzz(func(t *testing.T, archive []byte) {
		path := writeTempFile(t, "fuzz.tar.gz", archive)
		for _, v := range []*Verification{nil, {Keys: map[string]VerificationKey{"k": {Algorithm: "HS256", Key: "secret"}}}} {
			if _, err := ReadBundle(path, v); err != nil && !errors.Is(err, ErrBundle) {
				t.Errorf("error %q does not wrap ErrBundle", err)
			}
		}
	})
}

func ExampleReadBundle() {
	b, err := ReadBundle(filepath.Join("testdata", "bundles", "web"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(b.Revision, b.Roots)
	// Output: web-1 [mesh/policies/web]
}

// BundleFiles verifies with the algorithm it is given (a proxy's
// --verification-key-algorithm), RS256 when it is given none, and an
// ECDSA key read for RS256 is refused before any bundle is.
func TestBundleFilesVerifyAlgorithm(t *testing.T) {
	ec := newECKeys(t)
	dir := copyBundleDir(t, bundleFixture("web"))
	signBundleDir(t, dir, ec.private, "ES256", "")
	keyFile := writeTempFile(t, "ec.pem", []byte(ec.public))
	bundles, err := BundleFiles{Paths: []string{dir}, VerifyKey: keyFile, VerifyAlgorithm: "ES256"}.Read()
	if err != nil || len(bundles) != 1 {
		t.Fatalf("ES256: %v", err)
	}
	_, err = BundleFiles{Paths: []string{dir}, VerifyKey: keyFile}.Read()
	if err == nil || !strings.Contains(err.Error(), "RS256") {
		t.Errorf("an ECDSA key as RS256: %v; want it refused, naming RS256", err)
	}
	rsa := newRSAKeys(t)
	_, err = BundleFiles{Paths: []string{dir}, VerifyKey: writeTempFile(t, "rsa.pem", []byte(rsa.public)), VerifyAlgorithm: "RS256"}.Read()
	if !errors.Is(err, ErrSignature) {
		t.Errorf("an RS256 key for an ES256 signature: %v; want ErrSignature", err)
	}
}

// TestReadRemembersModules: a bundle read again parses only the modules
// that changed; each other module is what the first read kept of it (the
// same lazy module), and the second read holds the same modules.
func TestReadRemembersModules(t *testing.T) {
	files := map[string]string{".manifest": `{"revision": "1", "roots": ["mesh/policies/istio"]}`}
	maps.Copy(files, translatedDenies(t, 10))
	dir := writeBundle(t, t.TempDir(), files)
	first, err := ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	changed := first.raw.Modules[3].RelativePath
	if err := os.WriteFile(filepath.Join(dir, changed), append(slices.Clone(first.raw.Modules[3].Raw), "\n# changed\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := ReadBundle(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.lazy == nil || second.lazy == nil || len(second.raw.Modules) != 10 {
		t.Fatalf("lazy modules %v then %v, %d modules; want 10 translated modules read on the fast path", first.lazy != nil, second.lazy != nil, len(second.raw.Modules))
	}
	for i, mf := range second.raw.Modules {
		was, is := first.lazy[i], second.lazy[i]
		switch {
		case is == nil || was == nil:
			t.Fatalf("%s: not read on the fast path", mf.RelativePath)
		case mf.RelativePath == changed && (is == was || is.digest == was.digest):
			t.Errorf("%s changed but was not parsed again", mf.RelativePath)
		case mf.RelativePath != changed && is != was:
			t.Errorf("%s did not change but was parsed again", mf.RelativePath)
		case is.key != was.key || is.digest != sha256.Sum256(mf.Raw):
			t.Errorf("%s: package %s, digest %x; want %s and its source's", mf.RelativePath, is.key, is.digest, was.key)
		}
	}
}

// TestModuleMemoBound: the memo keeps the last limit modules at least,
// twice as many at most, and an old module read again is kept as new.
func TestModuleMemoBound(t *testing.T) {
	m := newModuleMemo(2)
	lm := map[string]*lazyModule{}
	d := func(name string) moduleDigest { return sha256.Sum256([]byte(name)) }
	put := func(name string) {
		lm[name] = &lazyModule{key: name}
		m.put(d(name), lm[name])
	}
	has := func(name string) bool { return m.get(d(name)) == lm[name] && lm[name] != nil }
	put("a")
	put("b")
	put("c") // a and b become the previous generation
	if !has("a") {
		t.Fatal("a dropped with only three modules read")
	}
	put("d") // c and a (read again) become the previous generation; b goes
	if has("b") {
		t.Error("b kept: more than twice the limit")
	}
	for _, name := range []string{"a", "c", "d"} {
		if !has(name) {
			t.Errorf("%s dropped: among the last modules read", name)
		}
	}
}
