package opabundles

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regomesh/regomesh/policy"
)

// rsaKeys is a PEM private key to sign bundles with and its PEM public key,
// as an OPA configuration's keys section holds it.
type rsaKeys struct{ private, public string }

func newRSAKeys(t *testing.T) rsaKeys {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return rsaKeys{
		private: string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})),
		public:  string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})),
	}
}

// indent makes a PEM key a YAML block scalar's body.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n"+prefix)
}

// denyPort is a bundle of owner's policy package that denies connections
// to port, with the given .manifest revision.
type denyPort struct {
	owner, revision string
	port            int
}

// tarball writes the bundle with OPA's bundle writer, signed by key (as
// opa build --signing-key does, naming keyID) unless key is nil.
func (d denyPort) tarball(t *testing.T, key *rsaKeys, keyID string) []byte {
	t.Helper()
	roots := []string{"mesh/policies/" + d.owner}
	src := fmt.Sprintf("package mesh.policies.%s.p\n\ndeny contains {\"policy\": \"%s/p\", \"rule\": \"port-%d\"} if input.destination.port == %d\n",
		d.owner, d.owner, d.port, d.port)
	return writeBundle(t, bundle.Bundle{
		Manifest: bundle.Manifest{Revision: d.revision, Roots: &roots},
		Data:     map[string]any{},
		Modules:  []bundle.ModuleFile{parsedModule(t, "/"+d.owner+"/p.rego", src)},
	}, key, keyID)
}

func parsedModule(t *testing.T, name, src string) bundle.ModuleFile {
	t.Helper()
	m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	return bundle.ModuleFile{URL: name, Path: name, Raw: []byte(src), Parsed: m}
}

func writeBundle(t *testing.T, b bundle.Bundle, key *rsaKeys, keyID string) []byte {
	t.Helper()
	if key != nil {
		if err := b.GenerateSignature(bundle.NewSigningConfig(key.private, "RS256", ""), keyID, false); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).DisableFormat(true).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// harness is a Set under test with its engine and metrics.
type harness struct {
	set     *Set
	engine  *policy.Engine
	metrics *Metrics
}

// startSet parses the OPA configuration, starts a Set of it (and opts'
// local bundles) and stops it when the test ends.
func startSet(t *testing.T, opaConfig string, opts Options) *harness {
	t.Helper()
	cfg, err := ParseConfig([]byte(opaConfig))
	if err != nil {
		t.Fatalf("ParseConfig: %v\n%s", err, opaConfig)
	}
	log := testLogger(t)
	engine, err := policy.NewEngine(policy.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	opts.Metrics, opts.Logger = NewMetrics(nil), log
	set, err := New(engine, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Stop)
	return &harness{set: set, engine: engine, metrics: opts.Metrics}
}

// testLogger writes the component's log into the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// waitFor polls cond until it holds; the bound is generous, since only a
// broken implementation runs into it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) revision(name string) string { return h.engine.Revisions()[name] }

func (h *harness) waitRevision(t *testing.T, name, revision string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("bundle %s is at revision %s (now %q)", name, revision, h.revision(name)),
		func() bool { return h.revision(name) == revision })
}

func (h *harness) failures(name, reason string) float64 {
	return testutil.ToFloat64(h.metrics.failures.WithLabelValues(name, reason))
}

func (h *harness) activations(name string) float64 {
	return testutil.ToFloat64(h.metrics.activations.WithLabelValues(name))
}

func (h *harness) notModified(name string) float64 {
	return testutil.ToFloat64(h.metrics.notModified.WithLabelValues(name))
}

func (h *harness) waitFailures(t *testing.T, name, reason string, atLeast float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v failures of bundle %s for reason %s", atLeast, name, reason),
		func() bool { return h.failures(name, reason) >= atLeast })
}

// decide asks the engine about a connection to port.
func (h *harness) decide(t *testing.T, port int) policy.Decision {
	t.Helper()
	d, err := h.engine.Decide(context.Background(), policy.Input{
		Layer:       policy.L4,
		Source:      policy.Source{Principal: "spiffe://td/ns/a/sa/client", IP: "10.0.0.1", Port: 40000},
		Destination: policy.Destination{IP: "10.0.0.2", Port: port, Namespace: "b", Workload: "web"},
		Connection:  policy.Connection{MTLS: true},
	})
	if err != nil {
		t.Fatalf("decide port %d: %v", port, err)
	}
	return d
}

// wantDecisions checks, per port, that the connection is allowed or
// denied by the named policy ("" for allow).
func (h *harness) wantDecisions(t *testing.T, want map[int]string) {
	t.Helper()
	for port, policyName := range want {
		d := h.decide(t, port)
		if policyName == "" && !d.Allow {
			t.Errorf("port %d: denied (%s, policy %q), want allowed", port, d.Reason, d.Policy)
		}
		if policyName != "" && (d.Allow || d.Policy != policyName) {
			t.Errorf("port %d: allow=%t policy=%q reason=%q, want denied by %s", port, d.Allow, d.Policy, d.Reason, policyName)
		}
	}
}
