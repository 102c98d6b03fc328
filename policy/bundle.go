package policy

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/keys"
)

// defaultSigningAlgorithm is the signature algorithm of a key that names none, as in OPA.
const defaultSigningAlgorithm = "RS256"

// Verification configures bundle signature checks, as OPA's bundle "signing"
// configuration does. When Keys is non-empty every bundle must carry a
// .signatures.json that verifies against one of them. When Keys is empty,
// unsigned bundles are accepted and signed ones are rejected: a signature
// nobody checks must not pass for a checked one.
type Verification struct {
	// Keys are the verification keys by key ID. A signature names its key in
	// its "kid" header (or its deprecated "keyid" claim).
	Keys map[string]VerificationKey
	// KeyID, when set, is the key every signature is verified with, whatever
	// key the signature names (OPA's keyid). Set it for signatures that name
	// no key, such as those of opa build --signing-key and opa sign without
	// a claims file; leave it empty to use the key each signature names.
	KeyID string
	// Scope, when set, must equal the signature's scope claim (OPA's scope).
	Scope string
	// Exclude lists glob patterns (path.Match) of bundle files left out of
	// verification (OPA's exclude_files).
	Exclude []string
}

// VerificationKey is one key bundles may be signed with.
type VerificationKey struct {
	// Algorithm is the JWS algorithm: RS256/384/512, PS256/384/512,
	// ES256/384/512 or HS256/384/512. Empty means RS256, as in OPA.
	Algorithm string
	// Key is the PEM public key (or certificate) for RS, PS and ES
	// algorithms, or the shared secret, byte for byte, for HS algorithms.
	Key string
}

// ReadVerificationKey reads a PEM public key file (or, for HS algorithms, an
// HMAC secret file, used byte for byte as OPA does) into a VerificationKey.
// An empty algorithm means RS256.
func ReadVerificationKey(path, algorithm string) (VerificationKey, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return VerificationKey{}, fmt.Errorf("policy: verification key %s: %w", path, err)
	}
	k := VerificationKey{Algorithm: cmp.Or(algorithm, defaultSigningAlgorithm), Key: string(src)}
	if err := checkVerificationKey(k.Algorithm, k.Key); err != nil {
		return VerificationKey{}, fmt.Errorf("policy: verification key %s: %w", path, err)
	}
	return k, nil
}

// checkVerificationKey reports whether key can verify alg signatures, so a wrong key
// fails when configured rather than on every bundle.
func checkVerificationKey(alg, key string) error {
	if !keys.IsSupportedAlgorithm(alg) {
		return fmt.Errorf("unsupported algorithm %q: use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, HS256, HS384 or HS512", alg)
	}
	if key == "" {
		return errors.New("the key is empty")
	}
	if strings.HasPrefix(alg, "HS") {
		return nil
	}
	pub, err := parsePublicKey(key)
	if err != nil {
		return err
	}
	return checkKeyFamily(alg, pub)
}

// parsePublicKey reads the public key of a PEM public key or certificate.
func parsePublicKey(key string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(key))
	if block == nil {
		return nil, errors.New("no PEM block found: expected a PEM public key (-----BEGIN PUBLIC KEY-----)")
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return cert.PublicKey, nil
	}
	if strings.Contains(block.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("the PEM block is a %s: configure the public key instead (openssl pkey -in key.pem -pubout)", block.Type)
	}
	return nil, fmt.Errorf("unexpected PEM block %q: expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", block.Type)
}

// checkKeyFamily reports whether pub is the kind of key alg verifies with.
func checkKeyFamily(alg string, pub crypto.PublicKey) error {
	var ok bool
	var want string
	switch alg[:2] {
	case "RS", "PS":
		_, ok = pub.(*rsa.PublicKey)
		want = "an RSA"
	case "ES":
		_, ok = pub.(*ecdsa.PublicKey)
		want = "an ECDSA"
	}
	if !ok {
		return fmt.Errorf("algorithm %s needs %s public key, the PEM holds a %T", alg, want, pub)
	}
	return nil
}

// opaConfig converts v into OPA's verification config; nil when no keys are
// configured, which makes OPA reject signed bundles and accept unsigned ones.
func (v *Verification) opaConfig() (*bundle.VerificationConfig, error) {
	if v == nil || len(v.Keys) == 0 {
		if v != nil && v.KeyID != "" {
			return nil, fmt.Errorf("key ID %q is set but no verification key is configured", v.KeyID)
		}
		return nil, nil
	}
	opaKeys := make(map[string]*bundle.KeyConfig, len(v.Keys))
	for id, k := range v.Keys {
		alg := cmp.Or(k.Algorithm, defaultSigningAlgorithm)
		if err := checkVerificationKey(alg, k.Key); err != nil {
			return nil, fmt.Errorf("verification key %q: %w", id, err)
		}
		opaKeys[id] = &bundle.KeyConfig{Key: k.Key, Algorithm: alg}
	}
	if _, ok := opaKeys[v.KeyID]; v.KeyID != "" && !ok {
		return nil, fmt.Errorf("key ID %q is not among the configured keys (%s)", v.KeyID, v.keyIDs())
	}
	return bundle.NewVerificationConfig(opaKeys, v.KeyID, v.Scope, v.Exclude), nil
}

// keyIDs lists the configured key IDs for messages.
func (v *Verification) keyIDs() string {
	if v == nil {
		return ""
	}
	return strings.Join(slices.Sorted(maps.Keys(v.Keys)), ", ")
}

// Bundle is an OPA bundle read from disk and verified, ready to activate.
// Only Name may change after ReadBundle returns (callers may rename a bundle
// before activating it); the rest is shared by every activation using it.
type Bundle struct {
	// Name identifies the bundle in errors, metrics and decision logs and
	// keys it in an activated set, where names are unique. ReadBundle sets it
	// to the path the bundle was read from.
	Name string
	// Revision is the .manifest revision, empty when there is none.
	Revision string
	// Roots are the .manifest roots: the data and package paths the bundle
	// owns. Without roots a bundle owns everything ([""]), as in OPA, and
	// cannot be activated next to another bundle.
	Roots []string

	raw      *bundle.Bundle
	warnings []string
	// lazy holds, for each module of raw read by fastParse, its package
	// and Rego version instead of its syntax tree (its Parsed is nil),
	// which tree parses again on need; nil entries, or nil lazy, for the
	// others (bundle_fastread.go).
	lazy []*lazyModule
}

// Warnings lists what the bundle holds that the library would silently
// ignore, such as a rule named denies or Allow in a policy package, each
// with its file:line. The engine logs them at every load.
func (b *Bundle) Warnings() []string { return slices.Clone(b.warnings) }

// ReadBundle reads a bundle from a directory or a .tar.gz file, verifies its
// signature against v (nil means no keys configured), parses it as Rego v1
// unless its manifest says otherwise, and checks that it leaves regomesh's
// library alone and is not empty: a bundle with no module and no data is
// refused unless its manifest declares it empty (EmptyBundleMetadata).
// Errors wrap ErrBundle, and also ErrSignature when the signature is
// missing, does not verify or cannot be checked.
//
// As with OPA (opa sign --bundle DIR, opa run -b DIR), the file names a
// directory bundle's signature covers include the directory path as given,
// so sign and read it with the same path.
func ReadBundle(path string, v *Verification) (*Bundle, error) {
	cfg, err := v.opaConfig()
	if err != nil {
		return nil, &bundleError{names: []string{path}, kind: ErrSignature, cause: err,
			hint: "check the verification keys, their algorithms and the key ID"}
	}
	src, err := statBundleSource(path)
	if err != nil {
		return nil, &bundleError{names: []string{path}, cause: err,
			hint: "check the bundle path: it must be a bundle directory or a .tar.gz file"}
	}
	raw, lazy, err := src.read(cfg, false)
	if err != nil {
		return nil, src.explain(err, v, cfg)
	}
	if raw.Type() == bundle.DeltaBundleType {
		return nil, &bundleError{names: []string{path}, detail: "is a delta bundle (patch.json)",
			hint: "serve snapshot bundles: every activation starts from an empty store"}
	}
	b := &Bundle{Name: path, Revision: raw.Manifest.Revision, Roots: slices.Clone(*raw.Manifest.Roots), raw: raw, lazy: lazy}
	if err := b.checkLibraryOwnership(); err != nil {
		return nil, err
	}
	if err := b.checkNotEmpty(); err != nil {
		return nil, err
	}
	b.warnings = b.lint()
	return b, nil
}

// bundleSource is where a bundle is read from: a directory or a .tar.gz file.
type bundleSource struct {
	path string
	dir  bool
}

func statBundleSource(path string) (bundleSource, error) {
	info, err := os.Stat(path)
	if err != nil {
		return bundleSource{}, err
	}
	return bundleSource{path: path, dir: info.IsDir()}, nil
}

// read reads the bundle with OPA's reader, configured as OPA's loader
// configures it for `opa run -b PATH`, plus annotation processing as the
// OPA runtime does. Modules in the translator's layout are read through
// fastParse (bundle_fastread.go), which then verifies the signature, if
// cfg asks for one, in the reader's place; skipVerify reads with OPA's
// reader alone, verifying nothing.
func (s bundleSource) read(cfg *bundle.VerificationConfig, skipVerify bool) (*bundle.Bundle, []*lazyModule, error) {
	loader, closer, err := s.loader()
	if err != nil {
		return nil, nil, err
	}
	defer closer.Close()
	var fast *fastModules
	if !skipVerify {
		baseDir := ""
		if s.dir {
			baseDir = s.path
		}
		fast = newFastModules(loader, baseDir, cfg)
		loader = fast
		if cfg != nil {
			// fast verifies: the reader never sees the modules it takes.
			cfg, skipVerify = nil, true
		}
	}
	r := bundle.NewCustomReader(loader).
		WithBundleVerificationConfig(cfg).
		WithSkipBundleVerification(skipVerify).
		WithRegoVersion(ast.RegoV1).
		WithProcessAnnotations(true).
		WithBundleName(s.path)
	if s.dir {
		// As OPA's loader does: module file names start with the directory.
		r = r.WithBaseDir(s.path)
	}
	b, err := r.Read()
	if err != nil {
		if fast != nil && fast.verifyErr != nil {
			return nil, nil, fast.verifyErr // the reader's message, unwrapped, as the reader gives it
		}
		return nil, nil, err
	}
	var lazy []*lazyModule
	if fast != nil {
		if lazy, err = fast.restore(&b); err != nil {
			return nil, nil, err
		}
	}
	return &b, lazy, nil
}

// loader opens the bundle's files; the closer releases the tarball. The
// loader gets OPA's file size limit itself, as OPA's downloader does, so a
// tar header claiming a huge file fails before the loader allocates for it.
func (s bundleSource) loader() (bundle.DirectoryLoader, io.Closer, error) {
	if s.dir {
		return bundle.NewDirectoryLoader(s.path).WithSizeLimitBytes(bundle.DefaultSizeLimitBytes), io.NopCloser(nil), nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, nil, err
	}
	return bundle.NewTarballLoaderWithBaseURL(f, s.path).WithSizeLimitBytes(bundle.DefaultSizeLimitBytes), f, nil
}

// explain turns a failed read into an error that says what to check. OPA's
// errors do not say whether the signature or the content failed, so the
// bundle is read once more without verification: if that succeeds, the
// signature was the problem. Content errors take precedence, since a bundle
// that cannot be read is rejected whoever signed it.
func (s bundleSource) explain(err error, v *Verification, cfg *bundle.VerificationConfig) error {
	if _, _, contentErr := s.read(nil, true); contentErr != nil {
		return s.contentError(contentErr)
	}
	if cfg == nil {
		return &bundleError{names: []string{s.path}, kind: ErrSignature, cause: err,
			detail: "the bundle is signed (.signatures.json) but no verification key is configured",
			hint:   "configure the verification key that signed it"}
	}
	hint := fmt.Sprintf("check that the bundle was signed with one of the configured keys (%s) and its algorithm, that the signature names its key (or Verification.KeyID is set), that the scope matches, and that no file changed after signing", v.keyIDs())
	if s.dir {
		hint += fmt.Sprintf("; a directory is verified as `opa sign --bundle %s` signs it", s.path)
	}
	return &bundleError{names: []string{s.path}, kind: ErrSignature, cause: err, hint: hint}
}

// contentError reports a bundle whose files cannot be read or parsed.
func (s bundleSource) contentError(err error) error {
	e := &bundleError{names: []string{s.path}, cause: err,
		hint: "check the file named above and the bundle's .manifest (its roots must cover every package and data path)"}
	if detail, ok := describeASTErrors(err, s.fileName); ok {
		e.detail, e.hint = detail, "fix the Rego at the file and line shown"
	}
	return e
}

// fileName is how messages name a file of the bundle: archive members are
// qualified with the archive's path; directory files already carry it.
func (s bundleSource) fileName(file string) string {
	if s.dir {
		return file
	}
	return path.Join(s.path, file)
}

// bundleFileName names a module file of bundle name in messages, as
// source.fileName does: directory bundles' module paths start with the
// directory, archives' are relative to the archive.
func bundleFileName(name string, mf bundle.ModuleFile) string {
	if mf.Path != mf.RelativePath {
		return mf.Path
	}
	return path.Join(name, mf.Path)
}

// describeASTErrors renders OPA's ast errors in err as "file:row: code: message",
// one per error, naming files with fileName. It reports false when err
// holds no ast error.
func describeASTErrors(err error, fileName func(string) string) (string, bool) {
	var errs ast.Errors
	var one *ast.Error
	switch {
	case errors.As(err, &errs):
	case errors.As(err, &one):
		errs = ast.Errors{one}
	default:
		return "", false
	}
	lines := make([]string, 0, len(errs))
	for _, e := range errs {
		lines = append(lines, describeASTError(e, fileName))
	}
	return strings.Join(lines, "; "), true
}

func describeASTError(e *ast.Error, fileName func(string) string) string {
	if e.Location == nil {
		return e.Code + ": " + e.Message
	}
	return fmt.Sprintf("%s:%d: %s: %s", fileName(e.Location.File), e.Location.Row, e.Code, e.Message)
}

// bundleError rejects one or more bundles: it names them, says what is
// wrong (file:line first when known) and what to check. It wraps ErrBundle,
// kind (ErrSignature for signature failures, or nil) and the cause, so
// callers can branch with errors.Is and reach OPA's errors with errors.As.
type bundleError struct {
	names  []string
	kind   error
	detail string // what is wrong; the cause's text when empty
	hint   string // what the user should check
	cause  error
}

var _ error = (*bundleError)(nil)

func (e *bundleError) Error() string {
	var b strings.Builder
	b.WriteString("policy: ")
	b.WriteString(e.subject())
	if e.kind == ErrSignature {
		b.WriteString(": signature")
	}
	b.WriteString(": ")
	b.WriteString(cmp.Or(e.detail, e.causeText()))
	if e.hint != "" {
		b.WriteString("; ")
		b.WriteString(e.hint)
	}
	return b.String()
}

func (e *bundleError) subject() string {
	switch len(e.names) {
	case 0:
		return "bundle set"
	case 1:
		return "bundle " + e.names[0]
	}
	return "bundles " + strings.Join(e.names, ", ")
}

func (e *bundleError) causeText() string {
	if e.cause == nil {
		return "rejected"
	}
	return e.cause.Error()
}

func (e *bundleError) Unwrap() []error {
	errs := []error{ErrBundle}
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}
