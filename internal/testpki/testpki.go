// Package testpki is the tests' certificate authority: SVIDs made with
// crypto/x509 the way SPIRE makes them (an EC P-256 root, leaves whose
// only name is a SPIFFE ID URI SAN), for tests of mutual TLS that run
// without a SPIRE server.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a trust domain's certificate authority.
type CA struct {
	TD   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// New makes the CA of trust domain td, valid for a day.
func New(t testing.TB, td string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"regomesh test"}, CommonName: td},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{TD: spiffeid.RequireTrustDomainFromString(td), cert: cert, key: key}
}

// Bundle is the trust bundle of the CA's trust domain.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TD, []*x509.Certificate{ca.cert})
}

// SVID issues an SVID for path (e.g. "/ns/a/sa/x") valid for an hour.
func (ca *CA) SVID(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	return ca.SVIDValid(t, path, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// SVIDValid issues an SVID for path valid from notBefore to notAfter.
func (ca *CA) SVIDValid(t testing.TB, path string, notBefore, notAfter time.Time) *x509svid.SVID {
	t.Helper()
	return ca.issue(t, path, notBefore, notAfter, nil)
}

// ServerSVID issues an SVID for path, valid for an hour, that also names
// the hosts (DNS names or IP addresses) a client verifying by host name
// dials, as a SPIRE entry's dnsNames do: for a stock client such as OPA
// that does not verify SPIFFE IDs.
func (ca *CA) ServerSVID(t testing.TB, path string, hosts ...string) *x509svid.SVID {
	t.Helper()
	return ca.issue(t, path, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), func(c *x509.Certificate) {
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				c.IPAddresses = append(c.IPAddresses, ip)
			} else {
				c.DNSNames = append(c.DNSNames, h)
			}
		}
	})
}

func (ca *CA) issue(t testing.TB, path string, notBefore, notAfter time.Time, edit func(*x509.Certificate)) *x509svid.SVID {
	t.Helper()
	id := spiffeid.RequireFromPath(ca.TD, path)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}
