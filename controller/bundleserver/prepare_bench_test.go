package bundleserver

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"

	"github.com/regomesh/regomesh/policy/istio"
)

// BenchmarkPrepare is what serving one new revision of a bundle of 1,000
// translated AuthorizationPolicies costs the bundle server: reading the
// controller's archive, signing (RS256) and writing the archive served.
//
//	go test -run XXX -bench Prepare ./controller/bundleserver/
func BenchmarkPrepare(b *testing.B) {
	var yaml bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&yaml, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: policy-%d, namespace: shop}\n"+
			"spec:\n  selector: {matchLabels: {app: app-%d}}\n  rules: [{from: [{source: {principals: [td.test/ns/shop/sa/client-%d]}}]}]\n", i, i%500, i)
	}
	res, _, err := istio.DecodeAll(&yaml, "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	tr, err := istio.TranslateAll(res, istio.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var archive bytes.Buffer
	if err := tr.WriteBundleTarGz(&archive); err != nil {
		b.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := NewSigner(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), "RS256", "")
	if err != nil {
		b.Fatal(err)
	}
	var served []byte
	for b.Loop() {
		if served, err = prepare(archive.Bytes(), signer); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(archive.Len()), "archive-bytes")
	b.ReportMetric(float64(len(served)), "served-bytes")
}
