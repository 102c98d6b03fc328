// Package proctest helps the tests that run the project's binaries
// (cmd/ztunnel, cmd/waypoint) as processes: their HTTP endpoints awaited
// and read, and a bundle as the controller serves it. Their output goes
// to an internal/syncbuf.Buffer, which the test reads while they write.
package proctest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/policy/istio"
)

// WaitFor polls url until it answers status, and fails t after 30
// seconds with the process's output.
func WaitFor(t testing.TB, url string, status int, output fmt.Stringer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never answered %d; the process's output:\n%s", url, status, output.String())
}

// Fetch is url's body; anything but 200 fails t.
func Fetch(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// AllowNamespaceBundle is the controller's bundle of one
// AuthorizationPolicy admitting namespace from to namespace shop, as a
// rebuild translates and archives it.
func AllowNamespaceBundle(t testing.TB, from string) *controller.Bundle {
	t.Helper()
	res, _, err := istio.DecodeAll(strings.NewReader(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [`+from+`]}
`), "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := istio.TranslateAll(res, istio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := controller.NewBundle(tr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
