package bundleserver_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/ztunnel/state"
)

const controllerPath = "/ns/regomesh-system/sa/regomesh-controller"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// bed is a bundle server on a loopback port over mutual TLS with SVIDs
// of a test CA, identifying clients with a state stream server whose
// state has two waypoints: shop/wp-a (shop/sa/wp-a) and shop/wp-b
// (shop/sa/wp-b).
type bed struct {
	ca   *testpki.CA
	addr string
	srv  *bundleserver.Server
	http *http.Server
}

func newBed(t *testing.T, cfg bundleserver.Config) *bed {
	t.Helper()
	ca := testpki.New(t, "td.test")
	stream := xds.New(xds.Config{TrustDomain: ca.TD, Logger: quiet()})
	stream.Update(meshState(t))
	cfg.Proxies = stream
	cfg.Logger = quiet()
	srv, err := bundleserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{ca: ca, addr: l.Addr().String(), srv: srv}
	b.http = bundleserver.NewHTTPServer(srv, ca.TD, ca.ServerSVID(t, controllerPath, "127.0.0.1", "localhost"), ca.Bundle())
	served := testgo.Go(t, func(context.Context) {
		if err := b.http.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.http.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return b
}

// meshState has a pod of each waypoint, and a pod using each.
func meshState(t *testing.T) *state.Snapshot {
	t.Helper()
	pod := func(i byte, name, sa, waypoint string) *state.Workload {
		return &state.Workload{
			UID: "uid-" + name, Name: name, Namespace: "shop", ServiceAccount: sa, TrustDomain: "td.test", Node: "node-a",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, i})}, Protocol: state.HBONE, Waypoint: waypoint,
		}
	}
	snap, err := state.NewSnapshot([]*state.Workload{
		pod(1, "wp-a", "wp-a", ""), pod(2, "wp-b", "wp-b", ""),
		pod(3, "web", "web", "shop/wp-a"), pod(4, "api", "api", "shop/wp-b"),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// client is an HTTPS client presenting an SVID for path, verifying the
// controller's SVID.
func (b *bed) client(t *testing.T, path string) *http.Client {
	t.Helper()
	tlsConfig := tlsconfig.MTLSClientConfig(b.ca.SVID(t, path), b.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(b.ca.TD, controllerPath)))
	tr := &http.Transport{TLSClientConfig: tlsConfig}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// response is what a request got.
type response struct {
	status      int
	etag, ctype string
	body        []byte
}

func (b *bed) get(t *testing.T, c *http.Client, path string, header http.Header) (response, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+b.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, etag: resp.Header.Get("ETag"), ctype: resp.Header.Get("Content-Type"), body: body}, nil
}

// translated builds the controller's bundle of policies (YAML), as its
// rebuild does.
func translated(t *testing.T, policies string) *controller.Bundle {
	t.Helper()
	res, _, err := istio.DecodeAll(strings.NewReader(policies), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := istio.TranslateAll(res, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := tr.WriteBundleTarGz(&archive); err != nil {
		t.Fatal(err)
	}
	return &controller.Bundle{Revision: tr.Revision(), Translation: tr, Archive: archive.Bytes()}
}

// allowFrom is an ALLOW policy for namespace shop admitting namespace ns.
func allowFrom(ns string) string {
	return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-` + ns + `, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [` + ns + `]}
`
}

// keyPair is a signing key (PEM private) and its PEM public key.
type keyPair struct{ private, public []byte }

func newKey(t *testing.T, alg string) keyPair {
	t.Helper()
	var key any
	var err error
	if strings.HasPrefix(alg, "ES") {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.(interface{ Public() crypto.PublicKey }).Public())
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{
		private: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		public:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
	}
}

func signer(t *testing.T, k keyPair, alg string) *bundleserver.Signer {
	t.Helper()
	s, err := bundleserver.NewSigner(k.private, alg, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}
