package opabundles

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCredentials downloads with OPA's credentials: a bearer token taken
// from the environment (OPA's ${VAR} notation), and a client certificate
// an HTTPS server requires, verified against the configured CA. A wrong
// token never makes the set ready.
func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	bearer := newBundleServer(t, false).start(t)
	bearer.requireToken("s3cret")
	bearer.publish(denyPort{"bearer", "b1", 1}.tarball(t, nil, ""))

	clientCA := newTestCA(t)
	mtls := newBundleServer(t, false)
	mtls.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.pool()}
	mtls.StartTLS()
	t.Cleanup(mtls.close)
	mtls.publish(denyPort{"mtls", "m1", 2}.tarball(t, nil, ""))
	serverCA := writeFile(t, dir, "server-ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mtls.Certificate().Raw}))
	cert, key := clientCA.issue(t, dir, "proxy")

	t.Setenv("REGOMESH_TEST_BUNDLE_TOKEN", "s3cret")
	h := startSet(t, fmt.Sprintf(`
services:
  bearer:
    url: %s
    credentials:
      bearer: {token: "${REGOMESH_TEST_BUNDLE_TOKEN}"}
  mtls:
    url: %s
    tls: {ca_cert: %s}
    credentials:
      client_tls: {cert: %s, private_key: %s}
bundles:
  bearer: {service: bearer, polling: {min_delay_seconds: 1, max_delay_seconds: 1}}
  mtls: {service: mtls, polling: {min_delay_seconds: 1, max_delay_seconds: 1}}
`, bearer.URL, mtls.URL, serverCA, cert, key), Options{})
	waitFor(t, "ready", func() bool { return h.set.Ready() == nil })
	h.wantDecisions(t, map[int]string{1: "bearer/p", 2: "mtls/p", 3: ""})
	if r := bearer.seen()[0]; r.authorization != "Bearer s3cret" || r.status != 200 {
		t.Errorf("first request: Authorization %q status %d, want the token and 200", r.authorization, r.status)
	}

	wrong := startSet(t, fmt.Sprintf(`
services:
  bearer:
    url: %s
    credentials:
      bearer: {token: wrong}
bundles:
  bearer: {polling: {min_delay_seconds: 1, max_delay_seconds: 1}}
`, bearer.URL), Options{})
	wrong.waitFailures(t, "bearer", reasonDownload, 1)
	if err := wrong.set.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "Unauthorized") {
		t.Errorf("Ready() with a wrong token = %v, want ErrNotReady saying Unauthorized", err)
	}
	if d := wrong.decide(t, 3); d.Allow {
		t.Errorf("a set that never loaded allowed a connection: %+v", d)
	}
}

// testCA issues client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bundle clients"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue writes a client certificate and its key under dir.
func (ca *testCA) issue(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		writeFile(t, dir, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

func writeFile(t *testing.T, dir, name string, body []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
