package kubeharness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// serviceAccountIssuer is the iss of the service-account tokens the API
// server signs, and their default audience.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// AdminUser is the user behind RESTConfig's token, in group system:masters,
// which RBAC's bootstrap policy binds to cluster-admin.
const AdminUser = "regomesh-admin"

// credentialFiles are the files kube-apiserver reads, generated per run.
type credentialFiles struct {
	caCert            string // the CA that signed the serving certificate
	caPEM             []byte // its contents, for clients
	servingCert       string // for 127.0.0.1 and localhost
	servingKey        string
	serviceAccountKey string // signs service-account tokens
	serviceAccountPub string // verifies them
	tokens            string // the static token file: the admin only
	adminToken        string
}

// writeCredentials generates a CA, a serving certificate, a
// service-account key pair and an admin token into dir.
func writeCredentials(dir string) (credentialFiles, error) {
	f := credentialFiles{
		caCert:            filepath.Join(dir, "ca.crt"),
		servingCert:       filepath.Join(dir, "apiserver.crt"),
		servingKey:        filepath.Join(dir, "apiserver.key"),
		serviceAccountKey: filepath.Join(dir, "sa.key"),
		serviceAccountPub: filepath.Join(dir, "sa.pub"),
		tokens:            filepath.Join(dir, "tokens.csv"),
	}
	ca, caKey, err := newCA()
	if err != nil {
		return f, err
	}
	f.caPEM = pemBlock("CERTIFICATE", ca.Raw)
	serving, servingKey, err := newServingCert(ca, caKey)
	if err != nil {
		return f, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, fmt.Errorf("kubeharness: service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return f, fmt.Errorf("kubeharness: service-account key: %w", err)
	}
	if f.adminToken, err = randomHex(32); err != nil {
		return f, err
	}
	// token,user,uid,"group,..." as --token-auth-file reads it.
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", f.adminToken, AdminUser, AdminUser)
	files := []struct {
		path     string
		contents []byte
	}{
		{f.caCert, f.caPEM},
		{f.servingCert, pemBlock("CERTIFICATE", serving)},
		{f.servingKey, pkcs8PEM(servingKey)},
		{f.serviceAccountKey, pkcs8PEM(saKey)},
		{f.serviceAccountPub, pemBlock("PUBLIC KEY", saPub)},
		{f.tokens, []byte(tokens)},
	}
	for _, file := range files {
		if err := os.WriteFile(file.path, file.contents, 0o600); err != nil {
			return f, fmt.Errorf("kubeharness: %w", err)
		}
	}
	return f, nil
}

// newCA returns a self-signed CA valid for a day.
func newCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeharness: CA key: %w", err)
	}
	tmpl := certTemplate("regomesh kubeharness CA")
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeharness: CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeharness: CA: %w", err)
	}
	return ca, key, nil
}

// newServingCert returns the API server's certificate (DER) and key.
func newServingCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeharness: serving key: %w", err)
	}
	tmpl := certTemplate("kube-apiserver")
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	tmpl.DNSNames = []string{"localhost"}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeharness: serving certificate: %w", err)
	}
	return der, key, nil
}

func certTemplate(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8PEM(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // an ECDSA P-256 key always marshals
	}
	return pemBlock("PRIVATE KEY", der)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("kubeharness: token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
