package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
)

// appPort is where the benchmark server listens in both server pods.
const appPort = 9000

// The pods: a client on node-1 and a server on node-2 in the mesh, and
// the same pair outside it (never enrolled, so never captured) for the
// direct and haproxy baselines. Both pairs cross the same fabric.
var pods = []localmesh.PodSpec{
	{Name: "client", Node: "node-1", Namespace: "bench", ServiceAccount: "client"},
	{Name: "server", Node: "node-2", Namespace: "bench", ServiceAccount: "server"},
	{Name: "plain-client", Node: "node-1", Namespace: "plain", ServiceAccount: "client", Outside: true},
	{Name: "plain-server", Node: "node-2", Namespace: "plain", ServiceAccount: "server", Outside: true},
}

// allowClientToServer lets the mesh client reach the server on appPort
// and httpPort, and the waypoint on httpPort; in the waypoint it lets the
// client GET the http service (http.go).
var allowClientToServer = fmt.Sprintf(`package mesh.policies.bench.x

allow_scope contains {"policy": "bench/x"} if input.destination.labels.app == "server"

allow contains {"policy": "bench/x", "rule": "client-to-server"} if {
	input.destination.labels.app == "server"
	input.source.principal == "spiffe://regomesh.test/ns/bench/sa/client"
	input.destination.port in {%[1]d, %[2]d}
}

allow contains {"policy": "bench/x", "rule": "waypoint-to-server"} if {
	input.destination.labels.app == "server"
	input.source.principal == "spiffe://regomesh.test/ns/bench/sa/waypoint"
	input.destination.port == %[2]d
}

# In the waypoint, per request: the client may GET the http service.
allow_scope contains {"policy": "bench/http"} if input.destination.service == "http.bench.svc.cluster.local"

allow contains {"policy": "bench/http", "rule": "client-gets"} if {
	input.layer == "l7"
	input.destination.service == "http.bench.svc.cluster.local"
	input.source.principal == "spiffe://regomesh.test/ns/bench/sa/client"
	input.request.method == "GET"
}
`, appPort, httpPort)

// bed is the running mesh with a benchmark server in both server pods.
type bed struct {
	mesh      *localmesh.Mesh
	servers   map[string]*server
	plain     *plainPair
	policyDir string
}

func startBed(ctx context.Context, netNum int) (*bed, error) {
	return startBedWith(ctx, localmesh.Config{Prefix: bedPrefix(""), Net: netNum})
}

// startBedWith starts a bed named by mc (Prefix, Net), which may also run
// ztunnels as processes and add workloads to their state; the nodes,
// pods, policy and servers are always the ones above, and with a
// WaypointBinary the waypointPods too.
func startBedWith(ctx context.Context, mc localmesh.Config) (*bed, error) {
	b := &bed{servers: map[string]*server{}}
	if err := b.start(ctx, mc); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// bedPrefix names a bed's namespaces rmb<pid>, or rmb<pid>-<tag> for a
// second bed, so that `ip netns del` of rmb<pid>-* clears a crashed run.
func bedPrefix(tag string) string {
	if tag == "" {
		return fmt.Sprintf("rmb%d", os.Getpid()%100000)
	}
	return fmt.Sprintf("rmb%d-%s", os.Getpid()%100000, tag)
}

func (b *bed) start(ctx context.Context, mc localmesh.Config) error {
	var err error
	if b.policyDir, err = writePolicy(allowClientToServer); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	mc.Nodes, mc.Pods, mc.Bundles = []string{"node-1", "node-2"}, pods, []string{b.policyDir}
	if mc.WaypointBinary != "" {
		mc.Pods = append(slices.Clip(pods), waypointPods...)
	}
	mc.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b.mesh, err = localmesh.Start(ctx, mc)
	if err != nil {
		return fmt.Errorf("bench: start the mesh (is bin/spire-* built? make spire): %w", err)
	}
	for _, name := range []string{"server", "plain-server"} {
		s, err := listenServer(b.pod(name))
		if err != nil {
			return err
		}
		b.servers[name] = s
	}
	b.plain, err = startPlainPair(b)
	return err
}

func (b *bed) pod(name string) *netbed.Pod { return b.mesh.Pods[name] }

// target is the benchmark server's address in the named pod.
func (b *bed) target(name string) string {
	return net.JoinHostPort(b.pod(name).IP.String(), fmt.Sprint(appPort))
}

// Close stops the servers and the mesh (ztunnels, SPIRE, namespaces).
func (b *bed) Close() error {
	var errs []error
	if b.plain != nil {
		errs = append(errs, b.plain.Close())
	}
	for _, s := range b.servers {
		errs = append(errs, s.Close())
	}
	if b.mesh != nil {
		errs = append(errs, b.mesh.Close())
	}
	if b.policyDir != "" {
		os.RemoveAll(b.policyDir)
	}
	return errors.Join(errs...)
}

// writePolicy writes a bundle directory for src, as the e2e tests do.
func writePolicy(src string) (string, error) {
	dir, err := os.MkdirTemp("", "rm-bench-policy-")
	if err != nil {
		return "", err
	}
	files := map[string]string{
		".manifest":   `{"revision": "bench", "roots": ["mesh/policies/bench"]}`,
		"policy.rego": src,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("bench: write policy: %w", err)
		}
	}
	return dir, nil
}
