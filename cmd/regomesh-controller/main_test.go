package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
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
		{name: "defaults", args: nil},
		{name: "every flag", args: []string{"--kubeconfig", "k", "--trust-domain", "td", "--root-namespace", "r", "--cluster-domain", "c", "--debounce", "1s", "--admin-addr", "[::1]:9"}},
		{name: "admin on every address", args: []string{"--admin-addr", ":15014"}, wantErr: "binds a loopback address only"},
		{name: "admin elsewhere", args: []string{"--admin-addr", "10.0.0.1:15014"}, wantErr: "--admin-expose"},
		{name: "admin exposed on purpose", args: []string{"--admin-addr", "10.0.0.1:15014", "--admin-expose"}},
		{name: "no debounce", args: []string{"--debounce", "0s"}, wantErr: "--debounce must be positive"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
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
	c, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.kubeconfig != "" || c.controller.TrustDomain != "cluster.local" || c.controller.RootNamespace != "istio-system" ||
		c.controller.ClusterDomain != "cluster.local" || c.controller.Debounce != 100*time.Millisecond || c.adminAddr != "127.0.0.1:15014" {
		t.Errorf("defaults = %+v", c)
	}
}

// The controller as main runs it: a kubeconfig file, the admin endpoint
// serving the state it built from a real API server.
func TestRunServesState(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms"})
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, ln, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

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
			return
		}
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
	pod, err := kube.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1"},
		Spec:       corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.1", PodIPs: []corev1.PodIP{{IP: "10.1.0.1"}}}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The whole control path: a pod created through a real API server reaches
// a ztunnel's stream client for its node, over mutual TLS with SVIDs from
// real SPIRE. (The controller and the ztunnel share one SVID here, the
// agent's delegate: one Workload API caller, this test process.)
func TestRunStreamsState(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	spireServer := harness.NewServer(t, harness.ServerConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("regomesh.test")})
	ztunnelID, err := wire.ZtunnelID(spireServer.TrustDomain(), "node1")
	if err != nil {
		t.Fatal(err)
	}
	agent := spireServer.NewAgent(t, harness.AgentConfig{Delegate: ztunnelID})
	cfg, err := parseFlags([]string{"--kubeconfig", writeKubeconfig(t, rc), "--trust-domain", "regomesh.test", "--debounce", "10ms",
		"--admin-addr", "127.0.0.1:0", "--spire-workload-socket", agent.WorkloadSocket()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, ln, xdsLn) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket())))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	applied := make(chan *state.Snapshot, 64)
	client, err := wire.NewClient(wire.ClientConfig{
		Addr: xdsLn.Addr().String(), SVID: source, Bundle: source, Controller: ztunnelID, Node: "node1",
		TrustDomain: "regomesh.test", Apply: func(s *state.Snapshot) {
			select {
			case applied <- s:
			default: // the test reads on; a later state holds the pod too
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
