package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// writeCerts writes the haproxy pair's PKI into dir: ca.pem, and
// server.pem and client.pem (certificate then key), all ECDSA P-256 as
// the SVIDs SPIRE issues.
func writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ca := template("bench CA", 1)
	ca.IsCA, ca.BasicConstraintsValid = true, true
	ca.KeyUsage = x509.KeyUsageCertSign
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("bench: CA certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemBlock("CERTIFICATE", caDER), 0o600); err != nil {
		return err
	}
	leaves := []struct {
		name  string
		usage x509.ExtKeyUsage
	}{{"server", x509.ExtKeyUsageServerAuth}, {"client", x509.ExtKeyUsageClientAuth}}
	for i, l := range leaves {
		t := template(l.name+".bench", int64(i+2))
		t.DNSNames = []string{l.name + ".bench"}
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{l.usage}
		if err := writeLeaf(filepath.Join(dir, l.name+".pem"), t, ca, caKey); err != nil {
			return err
		}
	}
	return nil
}

func writeLeaf(path string, t, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, t, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("bench: certificate %s: %w", t.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER)...), 0o600)
}

func template(cn string, serial int64) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
