package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	securityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/regomesh/regomesh/cli"
	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/spire/harness"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "defaults: bundles neither signed nor unsigned", args: nil, wantErr: "give --bundle-signing-key FILE (a PEM private key), or --bundle-unsigned"},
		{name: "unsigned on purpose", args: []string{"--bundle-unsigned"}},
		{name: "no bundles", args: []string{"--bundle-addr="}},
		{name: "signed and unsigned", args: []string{"--bundle-signing-key", "k.pem", "--bundle-unsigned"}, wantErr: "choose one"},
		{name: "every flag", args: []string{"--kubeconfig", "k", "--trust-domain", "td", "--root-namespace", "r", "--cluster-domain", "c", "--debounce", "1s", "--admin-addr", "[::1]:9",
			"--bundle-addr", ":1", "--bundle-signing-key", "k.pem", "--bundle-signing-key-id", "kid", "--bundle-signing-algorithm", "ES256"}},
		{name: "admin on every address", args: []string{"--admin-addr", ":15014", "--bundle-addr="}, wantErr: "binds a loopback address only"},
		{name: "admin elsewhere", args: []string{"--admin-addr", "10.0.0.1:15014", "--bundle-addr="}, wantErr: "--admin-expose"},
		{name: "admin exposed on purpose", args: []string{"--admin-addr", "10.0.0.1:15014", "--admin-expose", "--bundle-addr="}},
		{name: "no debounce", args: []string{"--debounce", "0s"}, wantErr: "--debounce must be positive"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
		{name: "log level", args: []string{"--bundle-addr=", "--log-level", "debug"}},
		{name: "bad log level", args: []string{"--bundle-addr=", "--log-level", "loud"}, wantErr: "--log-level"},
		{name: "leader election", args: []string{"--bundle-addr=", "--leader-elect", "--leader-elect-namespace", "ns", "--leader-elect-identity", "pod-1"}},
		{name: "waypoints", args: []string{"--bundle-addr=", "--waypoint-template", "w.yaml", "--waypoint-resync", "1m"}},
		{name: "no waypoint resync", args: []string{"--bundle-addr=", "--waypoint-resync", "0s"}, wantErr: "--waypoint-resync must be positive"},
		{name: "SPIRE registration", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock", "--spire-cluster-name", "east", "--spire-resync", "1m"}},
		{name: "SPIRE registration without a cluster name", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock"}, wantErr: "--spire-server-socket needs --spire-cluster-name"},
		{name: "SPIRE cluster name alone", args: []string{"--bundle-addr=", "--spire-cluster-name", "east"}, wantErr: "--spire-server-socket, which is not set"},
		{name: "SPIRE agent IDs by template", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock", "--spire-cluster-name", "east",
			"--spire-agent-id", "spiffe://{{.TrustDomain}}/spire/agent/x509pop/{{.Node}}"}},
		{name: "SPIRE agent IDs of another trust domain", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock", "--spire-cluster-name", "east",
			"--spire-agent-id", "spiffe://other.test/agent/{{.Node}}"}, wantErr: "--spire-agent-id: controller: SPIRE agent ID template made spiffe://other.test/agent/node-1"},
		{name: "SPIRE cluster name not a name", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock", "--spire-cluster-name", "East 1"}, wantErr: "SPIRE cluster name"},
		{name: "no SPIRE resync", args: []string{"--bundle-addr=", "--spire-server-socket", "api.sock", "--spire-cluster-name", "east", "--spire-resync", "0s"}, wantErr: "--spire-resync must be positive"},
		{name: "Rego namespaces", args: []string{"--bundle-addr=", "--rego-configmap-namespaces", "istio-system, platform"}},
		{name: "an empty Rego namespace", args: []string{"--bundle-addr=", "--rego-configmap-namespaces", "istio-system,"}, wantErr: "an empty namespace"},
		{name: "leader election without a namespace", args: []string{"--bundle-addr=", "--leader-elect", "--leader-elect-namespace=", "--leader-elect-identity", "pod-1"}, wantErr: "--leader-elect needs --leader-elect-namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("parseFlags(%q) = %v", tt.args, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("parseFlags(%q) = %v; want an error containing %q", tt.args, err, tt.wantErr)
			}
		})
	}
	c, err := parseFlags([]string{"--bundle-unsigned"})
	if err != nil {
		t.Fatal(err)
	}
	if c.kubeconfig != "" || c.controller.TrustDomain != "cluster.local" || c.controller.RootNamespace != "istio-system" ||
		c.controller.ClusterDomain != "cluster.local" || c.controller.Debounce != 100*time.Millisecond || c.adminAddr != "127.0.0.1:15014" ||
		c.bundles != (bundleFlags{addr: ":15013", keyID: "regomesh", algorithm: "RS256", unsigned: true}) {
		t.Errorf("defaults = %+v", c)
	}
	if c.controller.LeaderElection != nil {
		t.Errorf("leader election on by default: %+v", c.controller.LeaderElection)
	}
	c, err = parseFlags([]string{"--bundle-unsigned", "--leader-elect", "--leader-elect-namespace", "ns", "--leader-elect-identity", "pod-1"})
	if err != nil {
		t.Fatal(err)
	}
	if le := c.controller.LeaderElection; le == nil || *le != (controller.LeaderElection{Namespace: "ns", Name: "regomesh-controller", Identity: "pod-1"}) {
		t.Errorf("--leader-elect: %+v", le)
	}
}

// --waypoint-template is read and checked at start: a missing file or a
// template that cannot make a waypoint stops the controller, naming the
// flag.
func TestReadWaypointTemplate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.yaml"), "--waypoint-template: open"},
		{bad, "--waypoint-template " + bad + ": controller: waypoint template"},
	} {
		if _, err := readWaypointTemplate(waypointFlags{template: tc.file, resync: time.Minute}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("readWaypointTemplate(%s) = %v; want an error containing %q", tc.file, err, tc.want)
		}
	}
	w, err := readWaypointTemplate(waypointFlags{template: "../../controller/testdata/waypoint-template.yaml", resync: time.Minute})
	if err != nil || w.Template == nil || w.Resync != time.Minute {
		t.Errorf("readWaypointTemplate(the controller's test template) = %+v, %v", w, err)
	}
}

// The controller as main runs it: a kubeconfig file, the admin endpoint
// serving the state it built from a real API server.
func TestRunServesState(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms", "--bundle-addr="})
	if err != nil {
		t.Fatal(err)
	}
	published := make(chan struct{}, 1)
	cfg.controller.Publish = func(*controller.Update) {
		select {
		case published <- struct{}{}:
		default:
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ready, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, _ := startRun(t, cfg, listeners{admin: ln, ready: ready})

	runPod(t, ctx, kubernetes.NewForConfigOrDie(rc))

	// Read again after each update the controller publishes.
	const want = "shop/web-1 HBONE spiffe://regomesh.test/ns/shop/sa/default"
	url := fmt.Sprintf("http://%s/debug/state", ln.Addr())
	timeout := time.After(30 * time.Second)
	for {
		select {
		case <-published:
		case <-timeout:
			t.Fatalf("/debug/state workloads = %q; want %q", workloadsAt(t, url), want)
		}
		if workloadsAt(t, url) == want {
			break
		}
	}
	// Published, so ready.
	resp, err := http.Get(fmt.Sprintf("http://%s/healthz/ready", ready.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz/ready after the first state = %d, want 200", resp.StatusCode)
	}
}

func TestReadyHandler(t *testing.T) {
	var synced atomic.Bool
	h := readyHandler(&synced)
	for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz/ready", nil))
		if rec.Code != want {
			t.Errorf("synced %v: %d %q, want %d", synced.Load(), rec.Code, rec.Body.String(), want)
		}
		synced.Store(true)
	}
}

func workloadsAt(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return "(no state yet)"
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	var state struct {
		Workloads []struct {
			Namespace, Name, Protocol string
			TrustDomain               string `json:"trust_domain"`
			ServiceAccount            string `json:"service_account"`
		} `json:"workloads"`
	}
	if err := json.Unmarshal(body, &state); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, body)
	}
	var out []string
	for _, w := range state.Workloads {
		out = append(out, fmt.Sprintf("%s/%s %s spiffe://%s/ns/%s/sa/%s", w.Namespace, w.Name, w.Protocol, w.TrustDomain, w.Namespace, w.ServiceAccount))
	}
	return strings.Join(out, "; ")
}

// writeKubeconfig writes a kubeconfig file for rc, as users hand one to
// the controller.
func writeKubeconfig(t *testing.T, rc *rest.Config) string {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"test": {Server: rc.Host, CertificateAuthorityData: rc.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"admin": {Token: rc.BearerToken}},
		Contexts:       map[string]*clientcmdapi.Context{"test": {Cluster: "test", AuthInfo: "admin"}},
		CurrentContext: "test",
	}, kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// runPod creates the ambient namespace shop and its pod web-1 on node1,
// and reports it running at 10.1.0.1 as a kubelet would.
func runPod(t *testing.T, ctx context.Context, kube kubernetes.Interface) {
	t.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createRunningPod(t, ctx, kube, "shop", "web-1", "10.1.0.1")
}

// startRun runs the controller as main does, with cfg on ls, until stop
// or the end of the test, and fails the test if run returns an error.
// The context is run's.
func startRun(t *testing.T, cfg config, ls listeners) (ctx context.Context, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, ls) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	t.Cleanup(stop)
	return ctx, stop
}

// The whole control path: a pod created through a real API server reaches
// a ztunnel's stream client for its node, over mutual TLS with SVIDs from
// real SPIRE; so does each revision of the mesh bundle, which the ztunnel
// then fetches from the bundle server with the same SVID, signed with
// --bundle-signing-key. (The controller and the ztunnel share one SVID
// here, the agent's delegate: one Workload API caller, this test process.)
func TestRunStreamsState(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	spireServer := harness.NewServer(t, harness.ServerConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("regomesh.test")})
	ztunnelID, err := wire.ZtunnelID(spireServer.TrustDomain(), "node1")
	if err != nil {
		t.Fatal(err)
	}
	agent := spireServer.NewAgent(t, harness.AgentConfig{Delegate: ztunnelID})
	key := signingKey(t)
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms",
		"--admin-addr", "127.0.0.1:0", "--spire-workload-socket", agent.WorkloadSocket(), "--bundle-signing-key", key.file})
	if err != nil {
		t.Fatal(err)
	}
	ls := listeners{admin: listen(t), xds: listen(t), bundles: listen(t)}
	ctx, _ := startRun(t, cfg, ls)

	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	applied := make(chan *state.Snapshot, 64)
	revisions := make(chan string, 64)
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: ls.xds.Addr().String(), SVID: source, Bundle: source, Controller: ztunnelID, Node: "node1",
		TrustDomain: "regomesh.test", Apply: func(s *state.Snapshot) {
			select {
			case applied <- s:
			default: // the test reads on; a later state holds the pod too
			}
		},
		Bundles: func(revs map[string]string) {
			select {
			case revisions <- revs[wire.MeshBundle]:
			default:
			}
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	clientCtx, stopClient := context.WithCancel(ctx)
	clientDone := make(chan struct{})
	go func() { defer close(clientDone); client.Run(clientCtx) }()
	defer func() { stopClient(); <-clientDone }()

	runPod(t, ctx, kubernetes.NewForConfigOrDie(rc))
	waitPod(t, applied)

	// No policy yet: the mesh bundle is the empty one, declared so.
	fetch := bundleFetcher(t, source, ztunnelID, "https://"+ls.bundles.Addr().String()+"/"+wire.MeshBundle, key.public)
	first := waitRevision(t, revisions, "")
	if b := fetch(first); len(b.Modules) != 0 || b.Manifest.Metadata["regomesh"] == nil {
		t.Errorf("the bundle of no policy: %d modules, metadata %v; want none, declared empty", len(b.Modules), b.Manifest.Metadata)
	}

	// A policy: a new revision on the stream, whose bundle holds it.
	_, err = istioclient.NewForConfigOrDie(rc).SecurityV1().AuthorizationPolicies("shop").Create(ctx, &istiosecurity.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-front"},
		Spec: securityv1beta1.AuthorizationPolicy{Rules: []*securityv1beta1.Rule{{
			From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"front"}}}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	second := waitRevision(t, revisions, first)
	b := fetch(second)
	if len(b.Modules) != 1 || !strings.HasSuffix(b.Modules[0].Path, "shop/allow-front.rego") {
		t.Errorf("the bundle of revision %s holds %d modules; want shop/allow-front's", second, len(b.Modules))
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitPod(t *testing.T, applied <-chan *state.Snapshot) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case s := <-applied:
			if w, ok := s.Workload("shop", "web-1"); ok {
				if w.Node != "node1" || w.Protocol != state.HBONE || len(w.IPs) != 1 || w.IPs[0].String() != "10.1.0.1" {
					t.Fatalf("streamed workload %+v, want web-1 on node1, HBONE, 10.1.0.1", w)
				}
				return
			}
		case <-timeout:
			t.Fatal("the pod never reached the ztunnel's stream client")
		}
	}
}

// waitRevision waits for the stream to name a mesh bundle revision other
// than not.
func waitRevision(t *testing.T, revisions <-chan string, not string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case r := <-revisions:
			if r != "" && r != not {
				return r
			}
		case <-timeout:
			t.Fatalf("the stream never named a mesh bundle revision other than %q", not)
		}
	}
}

// bundleFetcher GETs url as the SVID's ztunnel, verifying the controller
// by its SPIFFE ID, and returns a function that reads the bundle of a
// revision, verified with the public key as OPA verifies it.
func bundleFetcher(t *testing.T, source *workloadapi.X509Source, controllerID spiffeid.ID, url string, public []byte) func(revision string) bundle.Bundle {
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(controllerID))}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	return func(revision string) bundle.Bundle {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") != `"`+revision+`"` {
			t.Fatalf("GET %s: %s, ETag %s; want the revision the stream named, %s", url, resp.Status, resp.Header.Get("ETag"), revision)
		}
		vc := bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{"regomesh": {Key: string(public), Algorithm: "RS256"}}, "", "", nil)
		b, err := bundle.NewCustomReader(bundle.NewTarballLoader(bytes.NewReader(body))).WithBundleVerificationConfig(vc).Read()
		if err != nil {
			t.Fatalf("the bundle of revision %s does not verify: %v", revision, err)
		}
		if b.Manifest.Revision != revision {
			t.Fatalf("the bundle's .manifest revision is %s; the stream named %s", b.Manifest.Revision, revision)
		}
		return b
	}
}

// key is a signing key's file (PEM private) and its PEM public key.
type key struct {
	file   string
	public []byte
}

func signingKey(t *testing.T) key {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "signing.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return key{file: file, public: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})}
}

// regomesh status against the controller as main runs it: a real API
// server, real SPIRE, and a ztunnel's real stream client, which refuses
// a pod whose address is loopback. The table and -o json show the
// ztunnel, what it ACKed, and the NACK with the client's reason.
func TestStatus(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	spireServer := harness.NewServer(t, harness.ServerConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("regomesh.test")})
	ztunnelID, err := wire.ZtunnelID(spireServer.TrustDomain(), "node1")
	if err != nil {
		t.Fatal(err)
	}
	agent := spireServer.NewAgent(t, harness.AgentConfig{Delegate: ztunnelID})
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms",
		"--spire-workload-socket", agent.WorkloadSocket(), "--bundle-unsigned"})
	if err != nil {
		t.Fatal(err)
	}
	ls := listeners{admin: listen(t), xds: listen(t), bundles: listen(t)}
	ctx, stop := startRun(t, cfg, ls)

	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: ls.xds.Addr().String(), SVID: source, Bundle: source, Controller: ztunnelID, Node: "node1",
		TrustDomain: "regomesh.test", Apply: func(*state.Snapshot) {}, Bundles: func(map[string]string) {},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	clientCtx, stopClient := context.WithCancel(ctx)
	clientDone := make(chan struct{})
	go func() { defer close(clientDone); client.Run(clientCtx) }()
	defer func() { stopClient(); <-clientDone }()

	kube := kubernetes.NewForConfigOrDie(rc)
	runPod(t, ctx, kube)
	admin := ls.admin.Addr().String()
	// The ztunnel ACKs the state holding web-1, and the mesh bundle.
	acked := waitStatus(t, admin, func(r xds.StatusReport) bool {
		p, ok := proxyIn(r, ztunnelID.String())
		return ok && p.AckedVersion != "" && p.Bundles[wire.MeshBundle] != "" && p.Bundles[wire.MeshBundle] == r.Bundles[wire.MeshBundle]
	})
	good, _ := proxyIn(acked, ztunnelID.String())
	if good.Kind != xds.Ztunnel || good.Node != "node1" || good.Streams != 1 || good.LastNACK != nil {
		t.Errorf("the ztunnel's status: %+v; want a ztunnel of node1 on one stream, no NACK", good)
	}

	// A proxy of node1 refusing the state (our ztunnel and the controller
	// read alike: see refuseState).
	const reason = "xds: resource Kubernetes//Pod/shop/web-1: a field this ztunnel cannot read"
	refuseState(t, ctx, ls.xds.Addr().String(), source, ztunnelID, "node1", reason)
	nacked := waitStatus(t, admin, func(r xds.StatusReport) bool {
		p, _ := proxyIn(r, ztunnelID.String())
		return p.LastNACK != nil
	})
	p, _ := proxyIn(nacked, ztunnelID.String())
	if p.LastNACK.Type != wire.TypeURL || p.LastNACK.Reason != reason || p.AckedVersion != good.AckedVersion || p.Streams != 2 {
		t.Errorf("after the refusal: %+v, NACK %+v; want two streams, a NACK of the state saying %q, and version %s still ACKed", p, p.LastNACK, reason, good.AckedVersion)
	}

	var stdout, stderr bytes.Buffer
	if code := cli.Run([]string{"status", "--admin", admin}, &stdout, &stderr); code != cli.ExitAllowed {
		t.Fatalf("regomesh status: exit %d: %s", code, stderr.String())
	}
	var row string
	for line := range strings.Lines(stdout.String()) {
		if strings.HasPrefix(line, ztunnelID.String()+" ") {
			row = line
		}
	}
	for _, want := range []string{" ztunnel ", " node1 ", " v" + good.AckedVersion + " ", "bundles/mesh=", reason} {
		if !strings.Contains(row, want) {
			t.Errorf("regomesh status: the ztunnel's row %q lacks %q; whole output:\n%s", row, want, stdout.String())
		}
	}
	stdout.Reset()
	if code := cli.Run([]string{"status", "--admin", admin, "-o", "json"}, &stdout, &stderr); code != cli.ExitAllowed {
		t.Fatalf("regomesh status -o json: exit %d: %s", code, stderr.String())
	}
	var report xds.StatusReport
	if err := json.Unmarshal(stdout.Bytes(), &report); err != nil {
		t.Fatalf("regomesh status -o json: %v:\n%s", err, stdout.String())
	}
	if q, _ := proxyIn(report, ztunnelID.String()); q.LastNACK == nil || q.LastNACK.Reason != p.LastNACK.Reason || q.AckedVersion != good.AckedVersion {
		t.Errorf("regomesh status -o json: the ztunnel %+v; want the NACK %+v and version %s", q, p.LastNACK, good.AckedVersion)
	}

	// The controller gone: status says where it looked.
	stdout.Reset()
	stderr.Reset()
	stop()
	if code := cli.Run([]string{"status", "--admin", admin}, &stdout, &stderr); code != cli.ExitError ||
		!strings.Contains(stderr.String(), "cannot reach regomesh-controller's admin endpoint at "+admin) {
		t.Errorf("regomesh status with the controller stopped: exit %d, %q", code, stderr.String())
	}
}

// waitStatus reads GET /debug/proxies from the admin endpoint until cond
// holds of the report.
func waitStatus(t *testing.T, admin string, cond func(xds.StatusReport) bool) xds.StatusReport {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + xds.StatusPath)
		if err != nil {
			t.Fatal(err)
		}
		var r xds.StatusReport
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %s: %v", xds.StatusPath, err)
		}
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxies' status never came to what the test waits for: %+v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func proxyIn(r xds.StatusReport, id string) (xds.ProxyStatus, bool) {
	for _, p := range r.Proxies {
		if p.ID == id {
			return p, true
		}
	}
	return xds.ProxyStatus{}, false
}

// createRunningPod creates pod namespace/name on node1 and reports it
// running at ip, as a kubelet would.
func createRunningPod(t *testing.T, ctx context.Context, kube kubernetes.Interface, namespace, name, ip string) {
	t.Helper()
	pod, err := kube.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := kube.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// --spire-server-socket: the controller as main runs it registers the
// entry of a pod created through a real API server in a real SPIRE
// server, under its node's alias, and says so at /debug/spire-entries.
func TestRunRegistersSPIREEntries(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	spireServer := harness.NewServer(t, harness.ServerConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("regomesh.test")})
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms",
		"--xds-addr=", "--bundle-addr=", "--spire-server-socket", spireServer.Socket(), "--spire-cluster-name", "east"})
	if err != nil {
		t.Fatal(err)
	}
	ls := listeners{admin: listen(t)}
	ctx, _ := startRun(t, cfg, ls)
	runPod(t, ctx, kubernetes.NewForConfigOrDie(rc))

	id := spiffeid.RequireFromString("spiffe://regomesh.test/ns/shop/sa/default")
	alias := spiffeid.RequireFromString("spiffe://regomesh.test/regomesh/node/east/node1")
	deadline := time.Now().Add(60 * time.Second)
	for {
		held, err := spireServer.Registrar().Lookup(ctx, id, alias)
		if err != nil {
			t.Fatal(err)
		}
		if len(held) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no entry of %s under %s: %+v", id, alias, held)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + ls.admin.Addr().String() + "/debug/spire-entries")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st controller.SPIREEntriesStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Desired != 2 || st.Created != 2 || !st.Leading {
		t.Errorf("/debug/spire-entries: %+v; want 2 entries (web-1's and node1's alias), created, leading", st)
	}
}
