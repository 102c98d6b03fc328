// Package bundleservertest runs a controller bundle server for the tests
// of the proxies that download from it, as httptest runs an HTTP server.
package bundleservertest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/internal/testgo"
)

// Start serves bundles signed with a new RSA key (RS256) over mutual TLS
// on loopback, presenting svid and verifying clients against bundle,
// identifying them with proxies, until the test ends. It returns the
// server (fed with Update), its URL and the PEM public key verifiers need.
func Start(t testing.TB, proxies bundleserver.Proxies, td spiffeid.TrustDomain, svid x509svid.Source, bundle x509bundle.Source) (*bundleserver.Server, string, []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := bundleserver.NewSigner(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), "RS256", "")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := bundleserver.New(bundleserver.Config{Signer: signer, Proxies: proxies})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := bundleserver.NewHTTPServer(srv, td, svid, bundle)
	served := testgo.Go(t, func(context.Context) {
		if err := hs.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("bundle server: %v", err)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
		<-served
	})
	return srv, "https://" + l.Addr().String(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
}
