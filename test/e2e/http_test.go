package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/localmesh"
)

// TestHTTPThroughTheMesh: an HTTP server and client, unchanged, talk
// through both ztunnels; the intruder's requests never reach the server.
func TestHTTPThroughTheMesh(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	l, err := localmesh.Listen(m.Pods["api"], ":8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s from api", r.URL.Path)
	})}
	t.Cleanup(func() { srv.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { srv.Close() })()
		srv.Serve(l)
	})
	url := fmt.Sprintf("http://%s:8080/orders/7", m.Pods["api"].IP)

	body, err := get(m, "frontend", url)
	if err != nil || body != "hello /orders/7 from api" {
		t.Fatalf("frontend GET: %q, %v", body, err)
	}
	before := len(m.accessEntries(t))
	start := time.Now()
	body, err = get(m, "intruder", url)
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("the intruder got a response: %q", body)
	case errors.As(err, &ne) && ne.Timeout(), time.Since(start) > refusedWithin:
		t.Errorf("the intruder's request ran into its timeout (%v after %v), want a prompt refusal", err, time.Since(start))
	}
	m.denyLogged(t, before, m.Pods["intruder"], "spiffe://regomesh.test/ns/shop/sa/intruder")
}

// get makes an HTTP request from inside a pod, as its app would.
func get(m *mesh, pod, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			return localmesh.Dial(m.Pods[pod], addr, 5*time.Second)
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
