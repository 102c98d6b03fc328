package spire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// leaf makes a self-signed X509-SVID-shaped certificate for id and its
// PKCS#8 key.
func leaf(t testing.TB, id string) (cert, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	if cert, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k); err != nil {
		t.Fatal(err)
	}
	if key, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func svidResponse(id *types.SPIFFEID, cert, key []byte, federatesWith ...string) *delegatedv1.SubscribeToX509SVIDsResponse {
	return &delegatedv1.SubscribeToX509SVIDsResponse{
		X509Svids: []*delegatedv1.X509SVIDWithKey{{
			X509Svid:    &types.X509SVID{Id: id, CertChain: [][]byte{cert}},
			X509SvidKey: key,
		}},
		FederatesWith: federatesWith,
	}
}

func TestSVIDUpdateFromProto(t *testing.T) {
	web := &types.SPIFFEID{TrustDomain: "regomesh.test", Path: "/ns/demo/sa/web"}
	cert, key := leaf(t, "spiffe://regomesh.test/ns/demo/sa/web")
	_, otherKey := leaf(t, "spiffe://regomesh.test/ns/demo/sa/web")
	for _, tc := range []struct {
		name    string
		resp    *delegatedv1.SubscribeToX509SVIDsResponse
		wantErr string
	}{
		{"valid, federated as SPIFFE ID and as name", svidResponse(web, cert, key, "spiffe://b.test", "c.test"), ""},
		{"no SVIDs (no entry)", &delegatedv1.SubscribeToX509SVIDsResponse{}, ""},
		{"announced ID differs from the certificate's", svidResponse(&types.SPIFFEID{TrustDomain: "regomesh.test", Path: "/ns/demo/sa/db"}, cert, key), "whose certificate is for"},
		{"key of another certificate", svidResponse(web, cert, otherKey), "unparsable SVID"},
		{"garbage certificate", svidResponse(web, []byte("nope"), key), "unparsable SVID"},
		{"bad announced ID", svidResponse(&types.SPIFFEID{TrustDomain: "Bad TD", Path: "/x"}, cert, key), "with SPIFFE ID"},
		{"bad federated trust domain", svidResponse(web, cert, key, "spiffe://"), "federated trust domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := svidUpdateFromProto(tc.resp)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(u.SVIDs) != len(tc.resp.GetX509Svids()) || len(u.FederatesWith) != len(tc.resp.GetFederatesWith()) {
				t.Errorf("update %+v does not carry the response's SVIDs and trust domains", u)
			}
		})
	}
}

func TestBundlesFromProto(t *testing.T) {
	ca, _ := leaf(t, "spiffe://regomesh.test")
	for _, tc := range []struct {
		name    string
		in      map[string][]byte
		want    int
		wantErr string
	}{
		{"own and federated", map[string][]byte{"spiffe://regomesh.test": ca, "b.test": append(append([]byte{}, ca...), ca...)}, 2, ""},
		{"none", nil, 0, ""},
		{"bad trust domain", map[string][]byte{"spiffe://": ca}, 0, "trust domain"},
		{"garbage certificates", map[string][]byte{"b.test": []byte("nope")}, 0, "unparsable bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := bundlesFromProto(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || set.Len() != tc.want {
				t.Errorf("bundlesFromProto = %d bundles, %v; want %d", set.Len(), err, tc.want)
			}
		})
	}
}

// The agent is local and trusted, but its bytes are still parsed: no input
// may panic, and an accepted SVID carries the announced ID.
func FuzzSVIDUpdateFromProto(f *testing.F) {
	cert, key := leaf(f, "spiffe://regomesh.test/ns/demo/sa/web")
	f.Add("regomesh.test", "/ns/demo/sa/web", cert, key, "b.test")
	f.Add("", "", []byte{}, []byte{}, "")
	f.Fuzz(func(t *testing.T, td, path string, cert, key []byte, federated string) {
		announced := &types.SPIFFEID{TrustDomain: td, Path: path}
		u, err := svidUpdateFromProto(svidResponse(announced, cert, key, federated))
		if err != nil {
			return
		}
		if want, _ := idFromProto(announced); u.SVIDs[0].ID != want {
			t.Errorf("accepted an SVID for %s announced as %v", u.SVIDs[0].ID, announced)
		}
	})
}

func FuzzBundlesFromProto(f *testing.F) {
	ca, _ := leaf(f, "spiffe://regomesh.test")
	f.Add("regomesh.test", ca)
	f.Add("spiffe://b.test", []byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, td string, der []byte) {
		_, _ = bundlesFromProto(map[string][]byte{td: der})
	})
}
