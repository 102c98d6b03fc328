package ztunnel

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/ztunnel/state"
)

func TestAdminConfigDump(t *testing.T) {
	snap, err := state.Decode([]byte(meshState), state.Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	level := new(slog.LevelVar)
	srv := httptest.NewServer(AdminHandler(AdminSources{
		State:      func() *state.Snapshot { return snap },
		Revisions:  func() map[string]string { return map[string]string{"istio": "r7"} },
		Generation: func() uint64 { return 3 },
		Certificates: func() []CertificateInfo {
			return []CertificateInfo{{Identity: "spiffe://td/ns/shop/sa/web", SerialNumber: "01", NotAfter: time.Unix(100, 0).UTC(), Chain: 1}}
		},
		LogLevel: level,
	}))
	defer srv.Close()
	body := get(t, srv.URL+"/config_dump", http.StatusOK)
	var d map[string]any
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	if n := len(d["workloads"].([]any)); n != 5 {
		t.Errorf("%d workloads in the dump", n)
	}
	if d["policy"].(map[string]any)["revisions"].(map[string]any)["istio"] != "r7" {
		t.Errorf("policy = %v", d["policy"])
	}
	if strings.Contains(strings.ToLower(body), "private") || strings.Contains(body, "PRIVATE KEY") {
		t.Error("the config dump mentions a private key")
	}
	resp, err := http.Post(srv.URL+"/logging?level=debug", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if level.Level() != slog.LevelDebug {
		t.Errorf("level = %v after POST level=debug", level.Level())
	}
	get(t, srv.URL+"/debug/pprof/", http.StatusOK)
}

func TestReadiness(t *testing.T) {
	var notReady error = errors.New("no policy loaded")
	srv := httptest.NewServer(ReadinessHandler(func() error { return notReady }))
	defer srv.Close()
	if body := get(t, srv.URL+"/healthz/ready", http.StatusServiceUnavailable); !strings.Contains(body, "no policy loaded") {
		t.Errorf("body = %q", body)
	}
	notReady = nil
	get(t, srv.URL+"/healthz/ready", http.StatusOK)
}

func get(t *testing.T, url string, want int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d: %s", url, resp.StatusCode, want, body)
	}
	return string(body)
}
