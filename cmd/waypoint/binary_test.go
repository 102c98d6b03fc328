package main

import (
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/proctest"
	"github.com/regomesh/regomesh/internal/syncbuf"
	"github.com/regomesh/regomesh/internal/testports"
	"github.com/regomesh/regomesh/spire/harness"
)

// TestBinaryWithSPIRE runs the real waypoint binary with its SVID from a
// real SPIRE agent's Workload API: it becomes ready, answers a request
// over HBONE (mTLS with SPIRE's SVIDs) with the policy's 403, counts it in
// Istio's metrics, dumps its config without keys, and exits cleanly on
// SIGTERM. Its decisions reach a decision-log service (--opa-config's
// decision_logs), masked; a --shadow-bundle that would deny a request the
// policy lets through is counted and written to --shadow-log while the
// request is served.
func TestBinaryWithSPIRE(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SPIRE")
	}
	server := harness.NewServer(t, harness.ServerConfig{})
	td := server.TrustDomain()
	wpID := spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "waypoint")
	agent := server.NewAgent(t, harness.AgentConfig{Delegate: wpID})
	dir := t.TempDir()
	bin := filepath.Join(dir, "waypoint")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	stateFile := filepath.Join(dir, "state.yaml")
	os.WriteFile(stateFile, []byte(`workloads:
- {name: waypoint, namespace: shop, serviceAccount: waypoint, ips: [10.1.0.2]}
- {name: web-1, namespace: shop, serviceAccount: web, ips: [10.1.0.9], labels: {app: web}}
services:
- {name: web, namespace: shop, vips: [10.96.0.9], ports: [{port: 80, targetPort: 8080, name: http}], selector: {app: web}, waypoint: shop/waypoint}
- {name: web2, namespace: shop, vips: [10.96.0.10], ports: [{port: 80, targetPort: 8080, name: http}], selector: {app: web}, waypoint: shop/waypoint}
`), 0o644)
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, ".manifest"), []byte(`{"revision": "r1", "roots": ["mesh/policies/t", "system/log"]}`), 0o644)
	os.WriteFile(filepath.Join(bundle, "p.rego"), []byte("package mesh.policies.t.p\n\ndeny contains {\"policy\": \"t/p\", \"rule\": \"no-admin\"} if input.request.url_path == \"/admin\"\n"), 0o644)
	os.WriteFile(filepath.Join(bundle, "log.rego"), []byte("package system.log\n\nmask contains \"/input/request/headers/authorization\"\n"), 0o644)
	candidate := filepath.Join(dir, "candidate")
	os.MkdirAll(candidate, 0o755)
	os.WriteFile(filepath.Join(candidate, ".manifest"), []byte(`{"revision": "c1", "roots": ["mesh/policies/t"]}`), 0o644)
	os.WriteFile(filepath.Join(candidate, "p.rego"), []byte("package mesh.policies.t.p\n\ndeny contains {\"policy\": \"t/p\", \"rule\": \"no-admin\"} if input.request.url_path == \"/admin\"\n\n"+
		"deny contains {\"policy\": \"t/candidate\", \"rule\": \"no-old\"} if input.request.url_path == \"/old\"\n"), 0o644) // the policy in force and one rule more
	shadowLog := filepath.Join(dir, "shadow.jsonl")
	logService := &decisionLogService{}
	logSrv := httptest.NewServer(logService)
	defer logSrv.Close()
	opaConfig := filepath.Join(dir, "opa.yaml")
	os.WriteFile(opaConfig, []byte("services: {logs: {url: \""+logSrv.URL+"\"}}\ndecision_logs: {reporting: {min_delay_seconds: 0, max_delay_seconds: 1}}\n"), 0o644)
	issuer := newTestIssuer(t, "https://issuer.test")
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, issuer.jwks, 0o644)
	authn := filepath.Join(dir, "ra.yaml")
	os.WriteFile(authn, []byte(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: web-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules: [{issuer: "https://issuer.test", jwksUri: "file://`+jwksFile+`"}]
`), 0o644)
	routes := filepath.Join(dir, "routes.yaml")
	os.WriteFile(routes, []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules:
  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web2, namespace: shop}
spec:
  hosts: [web2]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web2}}]
`), 0o644)
	hboneAddr, admin, metrics, ready := testports.Addr(t), testports.Addr(t), testports.Addr(t), testports.Addr(t)
	cmd := exec.Command(bin, "--local-config", stateFile, "--bundle", bundle, "--trust-domain", td.Name(), "--request-authentication", authn, "--routes", routes,
		"--spire-workload-socket", agent.WorkloadSocket(), "--hbone-addr", hboneAddr, "--admin-addr", admin,
		"--metrics-addr", metrics, "--readiness-addr", ready, "--drain-timeout", "2s", "--bundle-poll", "200ms",
		"--opa-config", opaConfig, "--shadow-bundle", candidate, "--shadow-log", shadowLog)
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	proctest.WaitFor(t, "http://"+ready+"/healthz/ready", 200, &logs)

	source, err := workloadapi.NewX509Source(t.Context(), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	pool, err := hbone.NewPool(hbone.PoolConfig{Bundle: source})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return pool.Dial(ctx, hbone.Request{Source: source, Peer: wpID, Addr: netip.MustParseAddrPort(hboneAddr),
			Authority: netip.MustParseAddrPort("10.96.0.9:80")})
	}}}
	resp, err := client.Get("http://web.shop/admin")
	if err != nil {
		t.Fatalf("request through the waypoint: %v\n%s", err, logs.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || string(body) != "RBAC: access denied" {
		t.Fatalf("got %d %q, want 403 RBAC: access denied\n%s", resp.StatusCode, body, logs.String())
	}
	// HTTPRoute: the rule for /old redirects.
	noFollow := &http.Client{Transport: client.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := noFollow.Get("http://web.shop/old"); err != nil {
		t.Errorf("GET /old: %v", err)
	} else if resp.Body.Close(); resp.StatusCode != 302 || resp.Header.Get("Location") != "http://web.shop/new" {
		t.Errorf("GET /old: %d Location %q, want the route's 302 to http://web.shop/new", resp.StatusCode, resp.Header.Get("Location"))
	}
	// VirtualService: web2's fault answers in its place.
	web2 := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return pool.Dial(ctx, hbone.Request{Source: source, Peer: wpID, Addr: netip.MustParseAddrPort(hboneAddr),
			Authority: netip.MustParseAddrPort("10.96.0.10:80")})
	}}}
	if resp, err := web2.Get("http://web2.shop/x"); err != nil {
		t.Errorf("GET web2: %v", err)
	} else if body, _ := io.ReadAll(resp.Body); resp.Body.Close() != nil || resp.StatusCode != 418 || string(body) != "fault filter abort" {
		t.Errorf("GET web2: %d %q, want the VirtualService's fault: 418 fault filter abort", resp.StatusCode, body)
	}
	// A set the waypoint cannot serve is refused on reload, named at its
	// line, and the last good one stays in force.
	os.WriteFile(routes, []byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web2, namespace: shop}\nspec:\n  hosts: [web2]\n  http:\n  - route: [{destination: {host: web2, subset: v1}}]\n"), 0o644)
	waitLog(t, &logs, `routes.yaml:7: VirtualService shop/web2: spec.http[0].route[0].destination.subset: not supported by the waypoint`)
	if resp, err := web2.Get("http://web2.shop/x"); err != nil {
		t.Errorf("GET web2 after a refused reload: %v", err)
	} else if resp.Body.Close(); resp.StatusCode != 418 {
		t.Errorf("GET web2 after a refused reload: %d, want the last good set's 418", resp.StatusCode)
	}
	// RequestAuthentication: a token of the issuer, its keys read from the
	// jwksUri file, is valid (policy then denies /admin); another issuer's
	// is Envoy's 401.
	for _, tc := range []struct {
		token  string
		status int
		body   string
	}{
		{issuer.token(t), 403, "RBAC: access denied"},
		{newTestIssuer(t, "https://elsewhere.test").token(t), 401, "Jwt issuer is not configured"},
	} {
		req, _ := http.NewRequest("GET", "http://web.shop/admin", nil)
		req.Header.Set("Authorization", "Bearer "+tc.token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request with a JWT: %v\n%s", err, logs.String())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || string(body) != tc.body {
			t.Errorf("request with a JWT: got %d %q, want %d %q\n%s", resp.StatusCode, body, tc.status, tc.body, logs.String())
		}
	}
	if m := proctest.Fetch(t, "http://"+metrics+"/metrics"); !strings.Contains(m, `istio_requests_total{`) || !strings.Contains(m, `reporter="waypoint"`) {
		t.Errorf("metrics lack the denied request:\n%.2000s", m)
	}
	if dump := proctest.Fetch(t, "http://"+admin+"/config_dump"); !strings.Contains(dump, wpID.String()) || strings.Contains(dump, "PRIVATE KEY") {
		t.Errorf("config dump:\n%s", dump)
	}
	// The candidate would have denied GET /old, which was served (302).
	const disagreement = `regomesh_policy_shadow_disagreements_total{layer="l7",policy="",rule="",shadow_policy="t/candidate",shadow_rule="no-old"} 1`
	if m := proctest.Fetch(t, "http://"+metrics+"/metrics"); !strings.Contains(m, disagreement) {
		t.Errorf("metrics lack %s:\n%.3000s", disagreement, m)
	}
	waitLog(t, &logs, `"policy":"t/p","rule":"no-admin"`)
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit 10s after SIGTERM\n%s", logs.String())
	}
	// Stopped, the waypoint has made its last upload and flushed its logs.
	uploaded := logService.events()
	var sawAdmin bool
	for _, e := range uploaded {
		req, _ := e["input"].(map[string]any)["request"].(map[string]any)
		if _, ok := req["headers"].(map[string]any)["authorization"]; ok {
			t.Errorf("an uploaded event holds the authorization header: %v", e)
		}
		sawAdmin = sawAdmin || req["path"] == "/admin" && e["result"].(map[string]any)["rule"] == "no-admin"
	}
	if len(uploaded) < 5 || !sawAdmin {
		t.Errorf("the decision-log service received %d events, want every request's, /admin denied by no-admin among them", len(uploaded))
	}
	raw, err := os.ReadFile(shadowLog)
	if lines := strings.Split(strings.TrimSpace(string(raw)), "\n"); err != nil || len(lines) != 1 ||
		!strings.Contains(lines[0], `"path":"/old"`) || !strings.Contains(lines[0], `"shadow":{"allow":false,"policy":"t/candidate","rule":"no-old"`) {
		t.Errorf("--shadow-log = %q, %v; want the one disagreeing request, GET /old", raw, err)
	}
}

// decisionLogService is an OPA decision-log service: it keeps the events
// of every gzip-compressed JSON array POSTed to /logs.
type decisionLogService struct {
	mu   sync.Mutex
	list []map[string]any
}

func (s *decisionLogService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	zr, err := gzip.NewReader(r.Body)
	if err != nil || r.URL.Path != "/logs" {
		http.Error(w, "want gzip on /logs", http.StatusBadRequest)
		return
	}
	var batch []map[string]any
	if err := json.NewDecoder(zr).Decode(&batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.list = append(s.list, batch...)
	s.mu.Unlock()
}

func (s *decisionLogService) events() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.list)
}

func waitLog(t *testing.T, logs fmt.Stringer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the access log never said %s:\n%s", want, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testIssuer signs JWTs with an EC key it publishes as a JWKS.
type testIssuer struct {
	name   string
	signer jose.Signer
	jwks   []byte
}

func newTestIssuer(t *testing.T, name string) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	return &testIssuer{name: name, signer: signer, jwks: jwks}
}

func (is *testIssuer) token(t *testing.T) string {
	t.Helper()
	tok, err := jwt.Signed(is.signer).Claims(map[string]any{"iss": is.name, "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
