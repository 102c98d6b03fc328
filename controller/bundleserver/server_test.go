package bundleserver_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/policy"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

const ztunnelPath = "/regomesh/ztunnel/node-a"

// TestProtocol: OPA's bundle service protocol as OPA's downloader speaks
// it: a GET answered with the bundle, its ETag and the long-poll media
// type; If-None-Match with that ETag (alone or in a list) answered 304;
// a long poll held until the revision changes, or answered 304 when its
// wait ends.
func TestProtocol(t *testing.T) {
	b := newBed(t, bundleserver.Config{Unsigned: true, MaxWait: 2 * time.Second})
	v1 := translated(t, allowFrom("front"))
	b.srv.Update(&controller.Update{Bundle: v1})
	c := b.client(t, ztunnelPath)
	path := "/" + wire.MeshBundle

	first, err := b.get(t, c, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	archive, _, _ := b.srv.Archive(wire.MeshBundle)
	if first.status != http.StatusOK || first.etag != `"`+v1.Revision+`"` || first.ctype != bundleserver.ContentType || !bytes.Equal(first.body, archive) {
		t.Fatalf("first GET: %d, ETag %s, Content-Type %s, %d bytes; want 200, the revision, %s and the bundle",
			first.status, first.etag, first.ctype, len(first.body), bundleserver.ContentType)
	}

	tests := []struct {
		name   string
		header http.Header
		want   int
	}{
		{name: "held", header: http.Header{"If-None-Match": {first.etag}}, want: http.StatusNotModified},
		{name: "held among superseded", header: http.Header{"If-None-Match": {first.etag + `, "older", "oldest"`}}, want: http.StatusNotModified},
		{name: "weak", header: http.Header{"If-None-Match": {"W/" + first.etag}}, want: http.StatusNotModified},
		{name: "another", header: http.Header{"If-None-Match": {`"older"`}}, want: http.StatusOK},
		{name: "none held, long poll asked", header: http.Header{"Prefer": {"modes=snapshot,delta;wait=30"}}, want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.get(t, c, path, tt.header)
			if err != nil {
				t.Fatal(err)
			}
			if got.status != tt.want || got.etag != first.etag {
				t.Errorf("got %d with ETag %s, want %d with %s", got.status, got.etag, tt.want, first.etag)
			}
		})
	}

	t.Run("long poll wakes on a new revision", func(t *testing.T) {
		v2 := translated(t, allowFrom("back"))
		got := make(chan response, 1)
		testgo.Go(t, func(context.Context) {
			r, err := b.get(t, c, path, http.Header{"If-None-Match": {first.etag}, "Prefer": {"modes=snapshot,delta;wait=60"}})
			if err != nil {
				t.Error(err)
			}
			got <- r
		})
		waitFor(t, func() bool { return b.srv.Waiting() == 1 }, "the long poll to be held")
		b.srv.Update(&controller.Update{Bundle: v2})
		select {
		case r := <-got:
			if r.status != http.StatusOK || r.etag != `"`+v2.Revision+`"` {
				t.Errorf("long poll answered %d with ETag %s; want 200 with the new revision", r.status, r.etag)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the long poll was not answered on the new revision")
		}
	})

	t.Run("long poll ends with 304 at its wait", func(t *testing.T) {
		cur, err := b.get(t, c, path, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// Asks for 60s; the server's MaxWait (2s) answers first.
		r, err := b.get(t, c, path, http.Header{"If-None-Match": {cur.etag}, "Prefer": {"wait=60"}})
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusNotModified || r.etag != cur.etag {
			t.Errorf("long poll ended %d, ETag %s; want 304 with %s", r.status, r.etag, cur.etag)
		}
		if waited := time.Since(start); waited < 2*time.Second {
			t.Errorf("answered after %v, before the 2s wait", waited)
		}
	})
}

// TestAuthorization: a client is a proxy by its SVID, and reads only its
// own bundles.
func TestAuthorization(t *testing.T) {
	b := newBed(t, bundleserver.Config{Unsigned: true})
	b.srv.Update(&controller.Update{
		Bundle: translated(t, allowFrom("front")),
		WaypointBundles: map[string]*controller.Bundle{
			"shop/wp-a": translated(t, allowFrom("a")), "shop/wp-b": translated(t, allowFrom("b")),
		},
	})
	mesh, wpA, wpB := "/"+wire.MeshBundle, "/"+wire.WaypointBundle("shop/wp-a"), "/"+wire.WaypointBundle("shop/wp-b")
	tests := []struct {
		name, client, path string
		want               int
	}{
		{name: "ztunnel reads the mesh bundle", client: ztunnelPath, path: mesh, want: http.StatusOK},
		{name: "ztunnel reads no waypoint's", client: ztunnelPath, path: wpA, want: http.StatusForbidden},
		{name: "waypoint A reads its own", client: "/ns/shop/sa/wp-a", path: wpA, want: http.StatusOK},
		{name: "waypoint A refused B's", client: "/ns/shop/sa/wp-a", path: wpB, want: http.StatusForbidden},
		{name: "waypoint A refused the mesh bundle", client: "/ns/shop/sa/wp-a", path: mesh, want: http.StatusForbidden},
		{name: "waypoint B reads its own", client: "/ns/shop/sa/wp-b", path: wpB, want: http.StatusOK},
		{name: "a workload is no proxy", client: "/ns/shop/sa/web", path: mesh, want: http.StatusForbidden},
		{name: "another path", client: ztunnelPath, path: "/bundles/other", want: http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.get(t, b.client(t, tt.client), tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got.status != tt.want {
				t.Errorf("GET %s as %s: %d %s; want %d", tt.path, tt.client, got.status, got.body, tt.want)
			}
			if got.status != http.StatusOK && len(got.body) > 0 && bytes.HasPrefix(got.body, []byte{0x1f, 0x8b}) {
				t.Error("a refusal carried a bundle")
			}
		})
	}

	t.Run("POST", func(t *testing.T) {
		resp, err := b.client(t, ztunnelPath).Post("https://"+b.addr+mesh, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST: %d, want 405", resp.StatusCode)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + b.addr + mesh)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a client without a certificate got %d", resp.StatusCode)
		}
	})
	t.Run("another trust domain", func(t *testing.T) {
		other := testpki.New(t, "other.test")
		cfg := tlsconfig.MTLSClientConfig(other.SVID(t, ztunnelPath), b.ca.Bundle(), tlsconfig.AuthorizeAny())
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + b.addr + mesh)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a ztunnel of another trust domain got %d", resp.StatusCode)
		}
	})
}

// TestNotServed: a waypoint whose bundle is not built yet, or gone, gets
// 404; a bundle that fails to prepare leaves the last one served.
func TestNotServed(t *testing.T) {
	b := newBed(t, bundleserver.Config{Unsigned: true})
	c := b.client(t, "/ns/shop/sa/wp-a")
	wpA := "/" + wire.WaypointBundle("shop/wp-a")
	if got, err := b.get(t, c, wpA, nil); err != nil || got.status != http.StatusNotFound {
		t.Fatalf("before any update: %d %v, want 404", got.status, err)
	}
	good := translated(t, allowFrom("a"))
	b.srv.Update(&controller.Update{WaypointBundles: map[string]*controller.Bundle{"shop/wp-a": good}})
	broken := &controller.Bundle{Revision: "broken", Archive: []byte("not a tar.gz")}
	b.srv.Update(&controller.Update{WaypointBundles: map[string]*controller.Bundle{"shop/wp-a": broken}})
	got, err := b.get(t, c, wpA, nil)
	if err != nil || got.status != http.StatusOK || got.etag != `"`+good.Revision+`"` {
		t.Fatalf("after a bundle that does not prepare: %d %s %v, want the last good revision", got.status, got.etag, err)
	}
	if revs := b.srv.Revisions(); revs[wire.WaypointBundle("shop/wp-a")] != good.Revision {
		t.Errorf("Revisions() = %v, want the last good revision", revs)
	}
	b.srv.Update(&controller.Update{})
	if got, err := b.get(t, c, wpA, nil); err != nil || got.status != http.StatusNotFound {
		t.Fatalf("after the waypoint went: %d %v, want 404", got.status, err)
	}
}

// TestSignature: what the server signs, OPA's bundle reader verifies
// with the public key, and so does the proxies' (policy.ReadBundle); a
// tampered bundle, or another key, does not verify.
func TestSignature(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			key := newKey(t, alg)
			b := newBed(t, bundleserver.Config{Signer: signer(t, key, alg)})
			src := translated(t, allowFrom("front"))
			b.srv.Update(&controller.Update{Bundle: src})
			archive, _, _ := b.srv.Archive(wire.MeshBundle)

			read, err := opaRead(archive, key.public, alg)
			if err != nil {
				t.Fatalf("OPA's reader: %v", err)
			}
			if read.Manifest.Revision != src.Revision || len(read.Modules) != len(src.Translation.Modules) {
				t.Errorf("read revision %s with %d modules, want %s with %d", read.Manifest.Revision, len(read.Modules), src.Revision, len(src.Translation.Modules))
			}
			if _, err := proxyRead(t, archive, key.public, alg); err != nil {
				t.Fatalf("policy.ReadBundle: %v", err)
			}

			tampered := tamper(t, archive)
			if _, err := opaRead(tampered, key.public, alg); err == nil {
				t.Error("OPA's reader verified a tampered bundle")
			}
			if _, err := proxyRead(t, tampered, key.public, alg); !errors.Is(err, policy.ErrSignature) {
				t.Errorf("policy.ReadBundle of a tampered bundle: %v, want ErrSignature", err)
			}
			if _, err := opaRead(archive, newKey(t, alg).public, alg); err == nil {
				t.Error("OPA's reader verified the bundle with another key")
			}
		})
	}
}

// TestEmptyBundle: a cluster without policies is served as a bundle that
// declares itself empty, which the proxies load (an undeclared empty
// bundle they refuse).
func TestEmptyBundle(t *testing.T) {
	key := newKey(t, "RS256")
	b := newBed(t, bundleserver.Config{Signer: signer(t, key, "RS256")})
	b.srv.Update(&controller.Update{Bundle: translated(t, "")})
	archive, _, _ := b.srv.Archive(wire.MeshBundle)
	got, err := proxyRead(t, archive, key.public, "RS256")
	if err != nil {
		t.Fatalf("policy.ReadBundle: %v", err)
	}
	if got.Revision == "" {
		t.Error("no revision")
	}
}

func TestConfig(t *testing.T) {
	_, err := bundleserver.New(bundleserver.Config{Proxies: xds.New(xds.Config{})})
	if err == nil || !strings.Contains(err.Error(), "--bundle-unsigned") {
		t.Errorf("New without a key: %v; want an error naming --bundle-unsigned", err)
	}
	if _, err := bundleserver.NewSigner([]byte("-----BEGIN PUBLIC KEY-----\n"), "", ""); err == nil {
		t.Error("NewSigner took a public key")
	}
	if _, err := bundleserver.NewSigner(newKey(t, "ES256").private, "RS256", ""); err == nil {
		t.Error("NewSigner took an EC key for RS256")
	}
	if _, err := bundleserver.NewSigner(newKey(t, "RS256").private, "HS256", ""); err == nil {
		t.Error("NewSigner took HS256")
	}
}

func opaRead(archive, public []byte, alg string) (bundle.Bundle, error) {
	vc := bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{bundleserver.DefaultKeyID: {Key: string(public), Algorithm: alg}}, "", "", nil)
	return bundle.NewCustomReader(bundle.NewTarballLoader(bytes.NewReader(archive))).WithBundleVerificationConfig(vc).Read()
}

// proxyRead reads archive as ztunnel and the waypoint do.
func proxyRead(t *testing.T, archive, public []byte, alg string) (*policy.Bundle, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "bundle.tar.gz")
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(path, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, public, 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := policy.ReadVerificationKey(keyFile, alg)
	if err != nil {
		t.Fatal(err)
	}
	return policy.ReadBundle(path, &policy.Verification{Keys: map[string]policy.VerificationKey{"k": key}, KeyID: "k"})
}

// tamper changes one byte of the first Rego module, keeping the rest.
func tamper(t *testing.T, archive []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	done := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !done && strings.HasSuffix(hdr.Name, ".rego") {
			data = bytes.Replace(data, []byte(`"front"`), []byte(`"evil!"`), 1)
			done = true
		}
		hdr.Size = int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if !done {
		t.Fatal("no module to tamper with")
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
