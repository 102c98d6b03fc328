package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/policy"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// kubePolicyKinds are the kinds the Kubernetes demo applies from
// examples/istio, with their resources.
var kubePolicyKinds = map[schema.GroupVersionKind]schema.GroupVersionResource{
	{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicy"}:      {Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
	{Group: "security.istio.io", Version: "v1", Kind: "PeerAuthentication"}:       {Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
	{Group: "security.istio.io", Version: "v1", Kind: "RequestAuthentication"}:    {Group: "security.istio.io", Version: "v1", Resource: "requestauthentications"},
	{Group: "security.istio.io", Version: "v1beta1", Kind: "AuthorizationPolicy"}: {Group: "security.istio.io", Version: "v1beta1", Resource: "authorizationpolicies"},
}

// kubeDemo runs the demo's calls in a mesh driven by a real
// kube-apiserver: the pods are Pod objects (their status set as a
// kubelet would), the waypoint a Gateway of class istio-waypoint and the
// services Service objects labelled istio.io/use-waypoint,
// examples/istio's AuthorizationPolicies are applied through the API
// server, and regomesh-controller streams the state and serves the
// translated policy, signed, to each node's ztunnel process and to the
// waypoint (--controller): the waypoint's HTTP requests are decided by
// the policies that target its Gateway, routed by
// examples/waypoint/routes.yaml.
func kubeDemo(ctx context.Context, out io.Writer, cfg demoConfig) error {
	dir, err := demoDir()
	if err != nil {
		return err
	}
	logs, err := openAccessLogs(dir)
	if err != nil {
		return err
	}
	defer logs.close()
	log, wpLog := logs.ztunnel, logs.waypoint
	policies := filepath.Join(cfg.Examples, "istio")
	fmt.Fprintf(out, "regomesh demo --kubernetes: starting etcd and kube-apiserver (bin/, make kube)...\n")
	clusterDir := filepath.Join(dir, "cluster")
	if err := os.Mkdir(clusterDir, 0o700); err != nil { // the admin token is in it
		return fmt.Errorf("demo: %w", err)
	}
	cluster, err := kubeharness.Start(ctx, kubeharness.Config{Dir: clusterDir})
	if errors.Is(err, kubeharness.ErrNoBinaries) {
		return fmt.Errorf("demo: %w (make demo-k8s builds them: see README.md)", err)
	}
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer cluster.Close()
	rc := cluster.RESTConfig()
	if err := applyPolicies(ctx, out, dynamic.NewForConfigOrDie(rc), policies); err != nil {
		return err
	}
	ztunnelBin, err := demoZtunnel(ctx, out, cfg, dir)
	if err != nil {
		return err
	}
	wp, err := newDemoWaypoint(ctx, out, cfg, dir)
	if err != nil {
		return err
	}
	issuer, routes := wp.issuer, wp.routes
	fmt.Fprintf(out, "starting the mesh (SPIRE server, the controller, 2 nodes with a SPIRE agent and a ztunnel process each, 6 pods and a waypoint)...\n")
	start := time.Now()
	m, err := localmesh.Start(ctx, localmesh.Config{
		Prefix: "rmkdemo", Net: 198, Nodes: []string{"node-1", "node-2"}, Pods: demoPods, Services: demoServices,
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		AccessLog:   log, Kubernetes: rc, ZtunnelBinary: ztunnelBin,
		WaypointBinary: wp.bin, WaypointAccessLog: wpLog, WaypointFlags: wp.flags(),
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer m.Close()
	fmt.Fprintf(out, "up in %.1fs; API server %s, controller's stream %s; policy: %s, applied through the API server\n\n",
		time.Since(start).Seconds(), rc.Host, m.ControlPlane.StreamAddr, policies)
	stopApps, err := startApps(m)
	if err != nil {
		return err
	}
	defer stopApps()
	runCalls(out, m, log)
	runRequests(out, m, wpLog, issuer)
	runSplit(out, m, issuer)
	printProxies(out, m)
	fmt.Fprintf(out, "\nWhere to look:\n")
	fmt.Fprintf(out, "  access log (JSON):     %s (ztunnels), %s (waypoint)\n", logs.ztunnelPath, logs.waypointPath)
	fmt.Fprintf(out, "  the waypoint's routes: %s; its JWT issuer: %s\n", routes, issuer.RequestAuthentication)
	fmt.Fprintf(out, "  the API server's data: %s (etcd, the API server's log and its admin token)\n", clusterDir)
	fmt.Fprintf(out, "  how the policies translate: go run ./cmd/regomesh policy translate %s\n", policies)
	if cfg.Once {
		return nil
	}
	fmt.Fprintf(out, "\nThe mesh stays up. Edit the AuthorizationPolicies under %s (for example add\n", policies)
	fmt.Fprintf(out, "\"cluster.local/ns/shop/sa/frontend\" to who may reach postgres): they are applied through the\n")
	fmt.Fprintf(out, "API server, the controller serves the new bundle, and the calls run again. Ctrl-C stops and cleans up.\n")
	return watchAndReapply(ctx, out, m, log, dynamic.NewForConfigOrDie(rc), policies)
}

// demoZtunnel builds cmd/ztunnel for the node processes, as demoWaypoint
// builds the waypoint.
func demoZtunnel(ctx context.Context, out io.Writer, cfg demoConfig, dir string) (string, error) {
	if cfg.ZtunnelBinary != "" {
		return cfg.ZtunnelBinary, nil
	}
	fmt.Fprintf(out, "building cmd/ztunnel for the nodes (--ztunnel-binary skips this)...\n")
	bin, err := localmesh.Build(ctx, dir, "ztunnel")
	if err != nil {
		return "", fmt.Errorf("demo: %w (run from the regomesh source tree with Go installed, or pass --ztunnel-binary)", err)
	}
	return bin, nil
}

// applyPolicies applies every Istio security resource of the YAML files
// in dir through the API server (server-side apply, as kubectl apply
// --server-side does), creating their namespaces first.
func applyPolicies(ctx context.Context, out io.Writer, client dynamic.Interface, dir string) error {
	objs, err := readPolicyObjects(dir)
	if err != nil {
		return err
	}
	nsRes := schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	for _, o := range objs {
		ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": o.GetNamespace()}}}
		if err := apply(ctx, client.Resource(nsRes), ns); err != nil {
			return err
		}
		if err := apply(ctx, client.Resource(kubePolicyKinds[o.GroupVersionKind()]).Namespace(o.GetNamespace()), o); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "applied %d Istio resources from %s through the API server\n", len(objs), dir)
	return nil
}

// apply applies o with server-side apply, the demo as its field manager.
func apply(ctx context.Context, res dynamic.ResourceInterface, o *unstructured.Unstructured) error {
	body, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	if _, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "regomesh-demo", Force: &force}); err != nil {
		return fmt.Errorf("demo: apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
	}
	return nil
}

// readPolicyObjects decodes every document of dir's .yaml files; each must
// be one of kubePolicyKinds and name its namespace.
func readPolicyObjects(dir string) ([]*unstructured.Unstructured, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("demo: no YAML files in %s", dir)
	}
	sort.Strings(files)
	var objs []*unstructured.Unstructured
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			o := &unstructured.Unstructured{}
			if err := dec.Decode(&o.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("demo: %s: %w", f, err)
			}
			if len(o.Object) == 0 {
				continue
			}
			if _, ok := kubePolicyKinds[o.GroupVersionKind()]; !ok || o.GetNamespace() == "" {
				return nil, fmt.Errorf("demo: %s: %s %q: the demo applies Istio security resources that name their namespace", f, o.GetKind(), o.GetName())
			}
			objs = append(objs, o)
		}
	}
	return objs, nil
}

// printProxies prints what each ztunnel has ACKed on the controller's
// stream: the state version and the bundle revision.
func printProxies(out io.Writer, m *localmesh.Mesh) {
	stream := m.ControlPlane.Stream()
	if stream == nil {
		return
	}
	fmt.Fprintf(out, "\nThe controller's proxies (state version %s, bundle %s):\n", stream.Version(), m.ControlPlane.Revisions()[wire.MeshBundle])
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tNODE\tSTATE ACKED\tBUNDLE ACKED")
	proxies := stream.Proxies()
	sort.Slice(proxies, func(i, j int) bool { return proxies[i].ID < proxies[j].ID })
	for _, p := range proxies {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, p.Node, p.AckedVersion, p.Bundles[wire.MeshBundle])
	}
	tw.Flush()
}

// watchAndReapply applies the policies again whenever their files change,
// waits until every ztunnel holds the controller's new bundle, and runs
// the calls again.
func watchAndReapply(ctx context.Context, out io.Writer, m *localmesh.Mesh, log *lockedWriter, client dynamic.Interface, dir string) error {
	last := policy.BundlesStamp([]string{dir})
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "\nstopping: tearing the mesh and the API server down")
			return nil
		case <-time.After(time.Second):
		}
		stamp := policy.BundlesStamp([]string{dir})
		if stamp == last {
			continue
		}
		last = stamp
		old := m.ControlPlane.Revisions()[wire.MeshBundle]
		if err := applyPolicies(ctx, out, client, dir); err != nil {
			fmt.Fprintf(out, "\n%v\n", err)
			continue
		}
		if err := waitBundle(ctx, m, old); err != nil {
			fmt.Fprintf(out, "\nthe ztunnels did not load a new policy (a change the translator refuses keeps the last valid one; see its status): %v\n", err)
			continue
		}
		fmt.Fprintf(out, "\npolicy applied at %s:\n", time.Now().Format("15:04:05"))
		runCalls(out, m, log)
		printProxies(out, m)
	}
}

// waitBundle waits until the controller serves a mesh bundle other than
// old and every ztunnel has loaded it.
func waitBundle(ctx context.Context, m *localmesh.Mesh, old string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rev := old
	for rev == old {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the controller still serves bundle %s", old)
		case <-time.After(50 * time.Millisecond):
		}
		rev = m.ControlPlane.Revisions()[wire.MeshBundle]
	}
	for _, p := range m.Processes {
		if err := p.WaitPolicyRevision(ctx, rev); err != nil {
			return err
		}
	}
	return nil
}
