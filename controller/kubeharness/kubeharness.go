// Package kubeharness runs a real Kubernetes control plane for the
// controller's tests, as envtest does: etcd and kube-apiserver on loopback
// ports, in a fresh directory, with a static admin token (group
// system:masters), RBAC authorization, service-account signing keys and a
// serving certificate generated for the run. Once /readyz answers, it
// installs the CRDs the controller watches, from the Go modules whose typed
// clients the main module compiles against: Istio's security.istio.io
// (AuthorizationPolicy, PeerAuthentication, RequestAuthentication, from
// istio.io/api) and the Gateway API's standard GatewayClass, Gateway and
// HTTPRoute (from sigs.k8s.io/gateway-api), and waits until they are served.
//
// kube-apiserver comes from `make kube` (tools/kube-apiserver/go.mod pins
// it), etcd from PATH (Debian's etcd-server, which `make kube` installs).
//
// In tests, New starts a cluster, skips the test when the binaries are
// missing, and stops it at cleanup:
//
//	cluster := kubeharness.New(t, kubeharness.Config{})
//	clients := kubernetes.NewForConfigOrDie(cluster.RESTConfig())
//
// Elsewhere, Start does the same with a context and errors; Close stops
// everything and removes the directory.
//
// What a real cluster has and this one does not: no kubelet, scheduler or
// kube-controller-manager runs. Pods stay where their creator puts them (set
// their status through the status subresource, as a kubelet would);
// namespaces get no default ServiceAccount, so the ServiceAccount admission
// plugin is off and a pod keeps the spec.serviceAccountName it was created
// with (empty stays empty); deleted namespaces stay Terminating.
package kubeharness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/regomesh/regomesh/internal/childproc"
)

// Config configures a cluster. The zero value works.
type Config struct {
	// BinDir holds kube-apiserver (and etcd, if it is there rather than on
	// PATH); default $REGOMESH_KUBE_BIN, else bin/ of the regomesh module
	// around the working directory, where `make kube` puts it.
	BinDir string
	// Dir is where etcd's data, the certificates, keys and logs go; default
	// a fresh temporary directory, removed by Close.
	Dir string
}

// Cluster is a running etcd and kube-apiserver.
//
// Close stops both, kube-apiserver first, and waits for them to exit;
// nothing it started outlives it.
type Cluster struct {
	dir       string
	ownDir    bool
	etcd      *childproc.Process
	apiserver *childproc.Process
	config    *rest.Config // admin; copied out by RESTConfig
}

// Start starts etcd and kube-apiserver, waits until the API server is
// ready, and installs the CRDs. On error nothing it started is left
// running. An error wraps ErrNoBinaries when kube-apiserver or etcd is
// missing.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	bins, err := findBinaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	// started is what the deferred clean-up closes: each failed return
	// below sets the result c to nil.
	started := &Cluster{dir: cfg.Dir}
	c = started
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "regomesh-kube-"); err != nil {
			return nil, fmt.Errorf("kubeharness: %w", err)
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, started.Close())
		}
	}()
	files, err := writeCredentials(c.dir)
	if err != nil {
		return nil, err
	}
	if err := c.startServers(ctx, bins, files); err != nil {
		return nil, err
	}
	if err := installCRDs(ctx, c.RESTConfig()); err != nil {
		return nil, err
	}
	return c, nil
}

// portAttempts is how many times startServers picks ports. A port is free
// when it is picked and bound by the child a moment later; anything else
// on the machine (a test running beside this one) can take it in between.
const portAttempts = 3

// startServers starts etcd and kube-apiserver and waits until the API
// server is ready. When either could not bind the ports it was given, it
// stops both, empties etcd's data directory and starts them again on new
// ports.
func (c *Cluster) startServers(ctx context.Context, bins binaries, files credentialFiles) error {
	var err error
	for range portAttempts {
		if err = c.startServersOnce(ctx, bins, files); err == nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		c.stopServers()
		if rmErr := os.RemoveAll(filepath.Join(c.dir, "etcd")); rmErr != nil {
			return errors.Join(err, fmt.Errorf("kubeharness: %w", rmErr))
		}
	}
	return fmt.Errorf("kubeharness: ports taken %d times in a row: %w", portAttempts, err)
}

func (c *Cluster) startServersOnce(ctx context.Context, bins binaries, files credentialFiles) error {
	etcdURL, err := c.startEtcd(bins.etcd)
	if err != nil {
		return err
	}
	return c.startAPIServer(ctx, bins.apiserver, etcdURL, files)
}

// stopServers stops kube-apiserver, then etcd, and waits for both.
func (c *Cluster) stopServers() {
	c.apiserver.Stop(syscall.SIGTERM, 10*time.Second)
	c.etcd.Stop(syscall.SIGTERM, 5*time.Second)
}

// startEtcd runs a one-member etcd on two free loopback ports and returns
// its client URL. The API server's readiness covers etcd's.
func (c *Cluster) startEtcd(bin string) (string, error) {
	ports, err := pickPorts(2)
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	c.etcd, err = childproc.Run("etcd", bin, filepath.Join(c.dir, "etcd.log"),
		"--name=regomesh",
		"--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=regomesh="+peerURL,
	)
	return clientURL, err
}

// serviceCIDR is the Services' cluster IP range; nothing routes to it.
const serviceCIDR = "10.96.0.0/16"

// startAPIServer runs kube-apiserver against etcdURL on a free loopback
// port and waits for /readyz.
func (c *Cluster) startAPIServer(ctx context.Context, bin, etcdURL string, files credentialFiles) error {
	ports, err := pickPorts(1)
	if err != nil {
		return err
	}
	port := ports[0]
	c.apiserver, err = childproc.Run("kube-apiserver", bin, filepath.Join(c.dir, "kube-apiserver.log"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+files.servingCert,
		"--tls-private-key-file="+files.servingKey,
		"--token-auth-file="+files.tokens,
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-account-issuer="+serviceAccountIssuer,
		"--service-account-key-file="+files.serviceAccountPub,
		"--service-account-signing-key-file="+files.serviceAccountKey,
		"--service-cluster-ip-range="+serviceCIDR,
		"--disable-admission-plugins=ServiceAccount",
		"--cert-dir="+filepath.Join(c.dir, "certs"),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	c.config = &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(port),
		BearerToken:     files.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: files.caPEM},
		// Tests create objects in bursts; client-go's default of 5 per
		// second would make them wait on themselves.
		QPS:   1000,
		Burst: 2000,
	}
	return c.waitReady(ctx)
}

// waitReady polls /readyz until it answers 200, kube-apiserver exits, or
// ctx ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	client, err := rest.HTTPClientFor(c.config)
	if err != nil {
		return fmt.Errorf("kubeharness: client for /readyz: %w", err)
	}
	defer client.CloseIdleConnections()
	var last error
	for {
		if last = ready(ctx, client, c.config.Host); last == nil {
			return nil
		}
		select {
		case <-c.apiserver.Done():
			return fmt.Errorf("kubeharness: kube-apiserver exited (%v) before it was ready; its log:\n%s",
				c.apiserver.Err(), childproc.Tail(c.apiserver.Logs(), 40))
		case <-c.etcd.Done():
			return fmt.Errorf("kubeharness: etcd exited (%v) before kube-apiserver was ready; its log:\n%s",
				c.etcd.Err(), childproc.Tail(c.etcd.Logs(), 40))
		case <-ctx.Done():
			return fmt.Errorf("kubeharness: kube-apiserver not ready at %s: %w (last check: %w); its log:\n%s",
				c.config.Host, ctx.Err(), last, childproc.Tail(c.apiserver.Logs(), 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func ready(ctx context.Context, client *http.Client, host string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, host+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

// RESTConfig returns a new copy of the admin's client configuration (group
// system:masters), for client-go and the typed clientsets.
func (c *Cluster) RESTConfig() *rest.Config {
	return rest.CopyConfig(c.config)
}

// RESTConfigWithToken returns the same configuration with token in place of
// the admin's: a service account's token from the TokenRequest API, say.
func (c *Cluster) RESTConfigWithToken(token string) *rest.Config {
	config := rest.AnonymousClientConfig(c.config)
	config.BearerToken = token
	return config
}

// Dir returns the cluster's directory: etcd's data, certificates, keys and
// the two logs.
func (c *Cluster) Dir() string { return c.dir }

// Logs returns kube-apiserver's log.
func (c *Cluster) Logs() string { return c.apiserver.Logs() }

// EtcdLogs returns etcd's log.
func (c *Cluster) EtcdLogs() string { return c.etcd.Logs() }

// Close stops kube-apiserver, then etcd, waits for both to exit, and
// removes the directory if Start made it. Calling it again does nothing.
func (c *Cluster) Close() error {
	c.stopServers()
	if c.ownDir {
		c.ownDir = false
		if err := os.RemoveAll(c.dir); err != nil {
			return fmt.Errorf("kubeharness: %w", err)
		}
	}
	return nil
}
