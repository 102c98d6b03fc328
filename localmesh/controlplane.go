package localmesh

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/client-go/rest"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/spire/harness"
)

// Ports the control plane serves on in its namespace: regomesh-controller's
// defaults (--xds-addr, --bundle-addr).
const (
	StreamPort = 15012
	BundlePort = 15013
)

// ControlPlaneNode is the name of the bed's node the controller's
// listeners are in: a namespace on the fabric, as the controller's pod
// is on the cluster's network, so every node's ztunnel reaches it.
const ControlPlaneNode = "control-plane"

// ControlPlane is regomesh-controller, run in this process against a
// Kubernetes API server (Config.Kubernetes), serving the state stream and
// the signed policy bundles from the bed's ControlPlaneNode namespace: the
// same packages cmd/regomesh-controller wires, with the SVID of the
// controller's service account from a SPIRE agent of its own. Its client
// of the API server dials from this process's own namespace, where the
// API server listens on loopback.
//
// Stop and Start restart it as a Deployment restarts its pod: what a
// proxy holds survives, nothing the controller held does, except its
// signing key (a Secret's).
type ControlPlane struct {
	// Node is the namespace its listeners are in.
	Node *netbed.Node
	// ID is the SPIFFE ID it presents, ztunnel's --controller-identity
	// default.
	ID spiffeid.ID
	// StreamAddr is ztunnel's --controller, BundleURL its
	// --controller-bundles, VerificationKey the PEM file of its
	// --verification-key.
	StreamAddr, BundleURL, VerificationKey string
	// LocalStreamAddr is the same stream on this process's loopback, as
	// kubectl port-forward would give it to a tool (a test's own
	// subscriber): the SVID presented decides what it gets, not the
	// network. Its port is kept across restarts.
	LocalStreamAddr string

	rest   *rest.Config
	td     spiffeid.TrustDomain
	signer *bundleserver.Signer
	source *workloadapi.X509Source
	log    *slog.Logger

	mu  sync.Mutex
	run *controlRun // nil while stopped
}

// controlRun is one run of the controller, from Start to Stop.
type controlRun struct {
	stream    *xds.Server
	bundles   *bundleserver.Server
	cancel    context.CancelFunc
	ran       chan error    // the controller's Run result
	published chan struct{} // closed at its first update
	stops     []func()      // the servers', in order
}

// startControlPlane adds the control plane's node to the bed, starts its
// SPIRE agent (the controller's SVID) and the controller, and waits for
// the controller's first update.
func (m *Mesh) startControlPlane(ctx context.Context) error {
	node, err := m.Bed.AddNode(ControlPlaneNode)
	if err != nil {
		return err
	}
	id := spiffeid.RequireFromSegments(m.TrustDomain, "ns", "regomesh-system", "sa", "regomesh-controller")
	agent, err := m.server.StartAgent(ctx, harness.AgentConfig{Name: ControlPlaneNode, Delegate: id})
	if err != nil {
		return fmt.Errorf("localmesh: control plane: %w", err)
	}
	m.agents[ControlPlaneNode] = agent
	cp := &ControlPlane{Node: node, ID: id, rest: m.cfg.Kubernetes, td: m.TrustDomain, log: m.cfg.Logger.With("component", "controller"),
		StreamAddr: net.JoinHostPort(node.IP.String(), fmt.Sprint(StreamPort)),
		BundleURL:  "https://" + net.JoinHostPort(node.IP.String(), fmt.Sprint(BundlePort))}
	m.ControlPlane = cp
	if cp.VerificationKey, cp.signer, err = newSigningKey(filepath.Join(m.dir, ControlPlaneNode)); err != nil {
		return err
	}
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if cp.source, err = workloadapi.NewX509Source(wait, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+agent.WorkloadSocket()))); err != nil {
		return fmt.Errorf("localmesh: control plane: no SVID for %s: %w", id, err)
	}
	return cp.Start(ctx)
}

// newSigningKey makes the RSA key the bundles are signed with (RS256, as
// regomesh-controller's default) and writes its public half into dir for
// the ztunnels' --verification-key.
func newSigningKey(dir string) (string, *bundleserver.Signer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", nil, err
	}
	signer, err := bundleserver.NewSigner(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), bundleserver.DefaultAlgorithm, "")
	if err != nil {
		return "", nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, "verification.pem")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	return path, signer, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// Start starts the controller and its servers and waits until it has
// published its first update (the cluster listed, state and bundles
// served), or ctx ends.
func (cp *ControlPlane) Start(ctx context.Context) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.run != nil {
		return errors.New("localmesh: the control plane is running")
	}
	r, err := cp.start()
	if err != nil {
		return err
	}
	cp.run = r
	select {
	case <-r.published:
		return nil
	case err := <-r.ran:
		r.ran <- err // for stop
		cp.stopRun()
		return fmt.Errorf("localmesh: controller stopped before its first update: %w", err)
	case <-ctx.Done():
		cp.stopRun()
		return fmt.Errorf("localmesh: no first update from the controller: %w", ctx.Err())
	}
}

// start wires one run as cmd/regomesh-controller does: the stream first
// (it identifies the proxies reading bundles), then the bundles, each
// update handed to both.
func (cp *ControlPlane) start() (*controlRun, error) {
	r := &controlRun{ran: make(chan error, 1), published: make(chan struct{})}
	r.stream = xds.New(xds.Config{TrustDomain: cp.td, Logger: cp.log})
	var err error
	r.bundles, err = bundleserver.New(bundleserver.Config{Signer: cp.signer, Proxies: r.stream, Logger: cp.log})
	if err != nil {
		return nil, err
	}
	var once sync.Once
	c, err := controller.New(cp.rest, controller.Config{TrustDomain: cp.td.Name(), Logger: cp.log,
		Publish: func(u *controller.Update) {
			r.stream.Update(u.Snapshot)
			r.bundles.Update(u)
			r.stream.UpdateBundles(r.bundles.Revisions()) // once served, so a proxy told of one can fetch it
			once.Do(func() { close(r.published) })
		}})
	if err != nil {
		return nil, err
	}
	if err := cp.serve(r); err != nil {
		r.stopServers()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.ran <- c.Run(ctx) }()
	return r, nil
}

// serve listens inside the control plane's namespace and serves the
// stream and the bundles over mutual TLS with the controller's SVID.
func (cp *ControlPlane) serve(r *controlRun) error {
	var streamL, bundleL net.Listener
	localL, err := net.Listen("tcp", cmp.Or(cp.LocalStreamAddr, "127.0.0.1:0"))
	if err != nil {
		return fmt.Errorf("localmesh: control plane: listen: %w", err)
	}
	cp.LocalStreamAddr = localL.Addr().String()
	err = inNetns(cp.Node.Path, func() (err error) {
		if streamL, err = net.Listen("tcp", cp.StreamAddr); err != nil {
			return err
		}
		if bundleL, err = net.Listen("tcp", net.JoinHostPort(cp.Node.IP.String(), fmt.Sprint(BundlePort))); err != nil {
			streamL.Close()
		}
		return err
	})
	if err != nil {
		localL.Close()
		return fmt.Errorf("localmesh: control plane: listen: %w", err)
	}
	gs := xds.NewGRPCServer(r.stream, cp.source, cp.source)
	var serving sync.WaitGroup
	for _, l := range []net.Listener{streamL, localL} {
		serving.Go(func() { gs.Serve(l) })
	}
	r.stops = append(r.stops, func() { gs.Stop(); serving.Wait(); r.stream.Wait() })
	hs := bundleserver.NewHTTPServer(r.bundles, cp.td, cp.source, cp.source)
	bundlesDone := make(chan struct{})
	go func() {
		defer close(bundlesDone)
		if err := hs.ServeTLS(bundleL, "", ""); !errors.Is(err, http.ErrServerClosed) {
			cp.log.Error("bundle server stopped", "error", err)
		}
	}()
	r.stops = append(r.stops, func() {
		r.bundles.Close() // ends the long polls
		hs.Close()
		<-bundlesDone
	})
	return nil
}

// Stop stops the controller and its servers, as its pod ends: every
// stream and download breaks. It returns the controller's error, if any.
func (cp *ControlPlane) Stop() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.stopRun()
}

func (cp *ControlPlane) stopRun() error {
	r := cp.run
	if r == nil {
		return nil
	}
	cp.run = nil
	r.cancel()
	err := <-r.ran
	r.stopServers()
	return err
}

func (r *controlRun) stopServers() {
	if r.cancel != nil {
		r.cancel()
	}
	for _, stop := range r.stops {
		stop()
	}
}

// Stream is the running controller's state stream server, nil while it is
// stopped: what each proxy ACKed is in its Proxies.
func (cp *ControlPlane) Stream() *xds.Server {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.run == nil {
		return nil
	}
	return cp.run.stream
}

// Revisions are the running controller's bundle revisions, by bundle
// name (bundles/mesh); nil while it is stopped.
func (cp *ControlPlane) Revisions() map[string]string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.run == nil {
		return nil
	}
	return cp.run.bundles.Revisions()
}

// close stops the controller and closes its SVID source.
func (cp *ControlPlane) close() error {
	err := cp.Stop()
	if cp.source != nil {
		cp.source.Close()
	}
	return err
}
