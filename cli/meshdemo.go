package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// demoPods is the sample app: a frontend and a checkout on node-1, an api
// and a postgres on node-2, a legacy pod outside the mesh, and the shop's
// waypoint on node-2.
var demoPods = []localmesh.PodSpec{
	{Name: "frontend", Node: "node-1", Namespace: "shop", ServiceAccount: "frontend"},
	{Name: "checkout", Node: "node-1", Namespace: "shop", ServiceAccount: "checkout"},
	{Name: "api", Node: "node-2", Namespace: "shop", ServiceAccount: "api"},
	{Name: "api-v2", Node: "node-2", Namespace: "shop", ServiceAccount: "api"}, // the api's next version, behind its own service
	{Name: "postgres", Node: "node-2", Namespace: "shop", ServiceAccount: "postgres"},
	{Name: "legacy", Node: "node-1", Namespace: "legacy", ServiceAccount: "default", Outside: true},
	{Name: "waypoint", Node: "node-2", Namespace: "shop", ServiceAccount: "waypoint", Waypoint: true},
}

// The api service: HTTP on port 80 of its VIP, served by the api pod's
// 8081 through the shop's waypoint, which decides every request (L7) and
// routes it (examples/waypoint/routes.yaml), to the api or, for some of
// /catalog, the api-v2 service.
const (
	apiVIP      = "10.96.0.20"
	apiV2VIP    = "10.96.0.21"
	apiHTTPPort = 8081
)

var demoServices = []state.LocalService{{
	Name: "api", Namespace: "shop", VIPs: []string{apiVIP}, Selector: map[string]string{"app": "api"},
	Waypoint: "shop/waypoint", Ports: []state.ServicePort{{Port: 80, TargetPort: apiHTTPPort, Name: "http"}},
}, {
	Name: "api-v2", Namespace: "shop", VIPs: []string{apiV2VIP}, Selector: map[string]string{"app": "api-v2"},
	Waypoint: "shop/waypoint", Ports: []state.ServicePort{{Port: 80, TargetPort: apiHTTPPort, Name: "http"}},
}}

// splitRequests is how many requests the demo sends to show the weighted
// split of /catalog between the api and api-v2.
const splitRequests = 40

// demoCall is one connection the demo tries.
type demoCall struct {
	from, to string
	port     int
}

var demoCalls = []demoCall{
	{"frontend", "api", 8080},
	{"api", "postgres", 5432},
	{"frontend", "postgres", 5432},
	{"checkout", "postgres", 5432},
	{"api", "postgres", 5433},
	{"legacy", "postgres", 5432},
	{"frontend", "api", 15001}, // ztunnel's own outbound port: refused, it would loop
}

// demoRequest is one HTTP request the demo sends to the api service,
// with a token of the demo's issuer for user, or an expired one, or none.
type demoRequest struct{ from, method, path, user string }

// expiredUser asks for a token that expired an hour ago.
const expiredUser = "expired"

var demoRequests = []demoRequest{
	{"frontend", "GET", "/catalog/42", ""},
	{"checkout", "GET", "/catalog/42", ""},
	{"checkout", "GET", "/admin/users", ""},
	{"checkout", "GET", "/catalog/../admin/users", ""}, // normalized to /admin/users before any rule
	{"frontend", "GET", "/v1/catalog/42", ""},          // rewritten to /catalog/42 by examples/waypoint/routes.yaml
	{"checkout", "POST", "/orders", ""},                // examples/orders wants a signed-in user
	{"checkout", "POST", "/orders", "alice"},
	{"checkout", "POST", "/orders", expiredUser}, // refused by the waypoint's JWT check, before policy
}

// meshDemo runs the sample app in a mesh on this machine and shows each
// call, allowed or denied, with the policy and rule that decided.
func meshDemo(ctx context.Context, out io.Writer, cfg demoConfig) error {
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
	bundle := filepath.Join(cfg.Examples, "bundle")
	wp, err := newDemoWaypoint(ctx, out, cfg, dir)
	if err != nil {
		return err
	}
	issuer, routes := wp.issuer, wp.routes
	regs := map[string]*prometheus.Registry{"node-1": prometheus.NewRegistry(), "node-2": prometheus.NewRegistry()}
	fmt.Fprintf(out, "regomesh demo: starting a mesh on this machine (SPIRE server, 2 nodes with a SPIRE agent and a ztunnel each, 6 pods and a waypoint)...\n")
	start := time.Now()
	m, err := localmesh.Start(ctx, localmesh.Config{
		Prefix: "rmdemo", Net: 199, Nodes: []string{"node-1", "node-2"}, Pods: demoPods, Services: demoServices,
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Bundles:     []string{bundle}, AccessLog: log, Registries: regs,
		WaypointBinary: wp.bin, WaypointAccessLog: wpLog, WaypointFlags: wp.flags(),
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer m.Close()
	fmt.Fprintf(out, "up in %.1fs; policy: %s (the mesh.authz library + your Rego)\n\n", time.Since(start).Seconds(), bundle)
	stopApps, err := startApps(m)
	if err != nil {
		return err
	}
	defer stopApps()
	metrics, err := serveDemoMetrics(regs)
	if err != nil {
		return err
	}
	defer metrics.Close()
	runCalls(out, m, log)
	runRequests(out, m, wpLog, issuer)
	runSplit(out, m, issuer)
	explainInput := filepath.Join(dir, "frontend-to-postgres.json")
	writeExplainInput(explainInput, m)
	explainRequest := filepath.Join(dir, "checkout-admin.json")
	writeExplainRequest(explainRequest, m)
	fmt.Fprintf(out, "\nWhere to look:\n")
	fmt.Fprintf(out, "  metrics (Istio names):  curl -s http://%s/metrics | grep istio_tcp\n", metrics.addrs["node-2"])
	fmt.Fprintf(out, "  access log (JSON):      %s (ztunnels), %s (waypoint)\n", logs.ztunnelPath, logs.waypointPath)
	fmt.Fprintf(out, "  the waypoint's routes:  %s; its JWT issuer: %s\n", routes, issuer.RequestAuthentication)
	fmt.Fprintf(out, "  why a call was denied:  go run ./cmd/regomesh policy explain --bundle %s -i %s\n", bundle, explainInput)
	fmt.Fprintf(out, "  and a request:          go run ./cmd/regomesh policy explain --bundle %s -i %s\n", bundle, explainRequest)
	if cfg.Once {
		return nil
	}
	fmt.Fprintf(out, "\nThe mesh stays up. Edit the Rego under %s (for example let the frontend reach postgres):\n", bundle)
	fmt.Fprintf(out, "every ztunnel reloads it and the calls run again. Ctrl-C stops and cleans up.\n")
	return watchAndRerun(ctx, out, m, log, wpLog, issuer, bundle)
}

// demoWaypointSetup is what the demos' waypoint pod runs: the binary,
// the demo's JWT issuer, and examples/waypoint's routes.
type demoWaypointSetup struct {
	bin, routes string
	issuer      *demoIssuer
}

func newDemoWaypoint(ctx context.Context, out io.Writer, cfg demoConfig, dir string) (*demoWaypointSetup, error) {
	bin, err := demoWaypoint(ctx, out, cfg, dir)
	if err != nil {
		return nil, err
	}
	issuer, err := newDemoIssuer(dir)
	if err != nil {
		return nil, fmt.Errorf("demo: JWT issuer: %w", err)
	}
	return &demoWaypointSetup{bin: bin, routes: filepath.Join(cfg.Examples, "waypoint", "routes.yaml"), issuer: issuer}, nil
}

// flags are the waypoint's flags: its routes and the issuer's
// RequestAuthentication.
func (w *demoWaypointSetup) flags() []string {
	return []string{"--routes", w.routes, "--request-authentication", w.issuer.RequestAuthentication}
}

// demoWaypoint is the cmd/waypoint binary the waypoint pod runs: the one
// given, or one built into dir with the Go toolchain (make demo runs from
// the source tree).
func demoWaypoint(ctx context.Context, out io.Writer, cfg demoConfig, dir string) (string, error) {
	if cfg.WaypointBinary != "" {
		return cfg.WaypointBinary, nil
	}
	fmt.Fprintf(out, "building cmd/waypoint for the waypoint pod (--waypoint-binary skips this)...\n")
	bin, err := localmesh.Build(ctx, dir, "waypoint")
	if err != nil {
		return "", fmt.Errorf("demo: %w (run from the regomesh source tree with Go installed, or pass --waypoint-binary)", err)
	}
	return bin, nil
}

// startApps runs the sample app: echo servers as the api (8080) and
// postgres, and the api's HTTP server, which answers every request it
// receives (what it never sees, the waypoint refused). stop closes them
// and waits until they have returned.
func startApps(m *localmesh.Mesh) (stop func(), err error) {
	var (
		wg      sync.WaitGroup
		closers []io.Closer
	)
	stop = func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}
	for _, s := range []struct {
		pod  string
		port int
	}{{"api", 8080}, {"postgres", 5432}, {"postgres", 5433}, {"api", apiHTTPPort}, {"api-v2", apiHTTPPort}} {
		l, err := localmesh.Listen(m.Pods[s.pod], fmt.Sprintf(":%d", s.port))
		if err != nil {
			stop()
			return nil, err
		}
		if s.port != apiHTTPPort {
			closers = append(closers, l)
			wg.Go(func() { localmesh.Echo(l) })
			continue
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s: %s %s\n", s.pod, r.Method, r.URL.Path)
		})}
		closers = append(closers, srv)
		wg.Go(func() { srv.Serve(l) })
	}
	return stop, nil
}

// runRequests sends every HTTP request to the api service and prints what
// the waypoint decided.
func runRequests(out io.Writer, m *localmesh.Mesh, log *lockedWriter, issuer *demoIssuer) {
	fmt.Fprintf(out, "\nHTTP to the api service (http://%s), each request decided by the shop's waypoint (L7):\n", apiVIP)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tREQUEST\tRESULT\tPOLICY/RULE\tROUTE\tREASON")
	for _, r := range demoRequests {
		mark := log.size()
		status, _, err := tryRequest(m, r, issuer)
		result := fmt.Sprintf("%d", status)
		if err != nil {
			result = "error: " + err.Error()
		}
		e := requestDecision(log, mark)
		rule, route, reason := "-", "-", e.Reason
		if e.Policy != "" {
			rule = e.Policy + " " + e.Rule
		}
		if e.Route != "" {
			route = e.Route
		}
		if e.Flags == waypoint.FlagJWT {
			reason = "JWT refused: " + e.Error
		}
		request := r.method + " " + r.path
		if r.user != "" {
			request += " (JWT: " + r.user + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.from, request, result, rule, route, reason)
	}
	tw.Flush()
}

// tryRequest sends one request from a pod to the api service, on a
// connection of its own, and returns the response's status.
func tryRequest(m *localmesh.Mesh, r demoRequest, issuer *demoIssuer) (status int, body string, err error) {
	transport := &http.Transport{DisableKeepAlives: true, DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		return localmesh.Dial(m.Pods[r.from], addr, 5*time.Second)
	}}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequest(r.method, "http://"+apiVIP+r.path, nil)
	if err != nil {
		return 0, "", err
	}
	req.URL.Opaque = r.path // sent as written: the waypoint normalizes it, not the client
	if r.user != "" {
		exp, sub := time.Now().Add(time.Hour), r.user
		if r.user == expiredUser {
			exp, sub = time.Now().Add(-time.Hour), "alice"
		}
		tok, err := issuer.token(sub, exp)
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: transport}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// runSplit sends splitRequests requests to /catalog and counts which
// version of the api answered each, as the HTTPRoute's weights split them.
func runSplit(out io.Writer, m *localmesh.Mesh, issuer *demoIssuer) {
	counts := map[string]int{}
	for range splitRequests {
		status, body, err := tryRequest(m, demoRequest{from: "frontend", method: "GET", path: "/catalog/7"}, issuer)
		who, _, _ := strings.Cut(body, ":")
		if err != nil || status != http.StatusOK {
			who = "failed"
		}
		counts[who]++
	}
	fmt.Fprintf(out, "\nWeighted split of /catalog (examples/waypoint/routes.yaml, api 75 : api-v2 25): %d requests, %d to api, %d to api-v2",
		splitRequests, counts["api"], counts["api-v2"])
	if counts["failed"] > 0 {
		fmt.Fprintf(out, ", %d failed", counts["failed"])
	}
	fmt.Fprintln(out)
}

// requestDecision waits briefly for the waypoint's access-log entry
// written after mark.
func requestDecision(log *lockedWriter, mark int) waypoint.AccessEntry {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(bytes.NewReader(log.since(mark)))
		for sc.Scan() {
			var e waypoint.AccessEntry
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Kind == "http" {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return waypoint.AccessEntry{Reason: "no decision logged"}
}

// runCalls tries every call and prints what the destination's ztunnel decided.
func runCalls(out io.Writer, m *localmesh.Mesh, log *lockedWriter) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tRESULT\tPOLICY/RULE\tREASON")
	for _, c := range demoCalls {
		mark := log.size()
		ok := tryCall(m, c)
		e := decisionFor(log, mark)
		result := "DENIED"
		if ok {
			result = "allowed"
		}
		rule := "-"
		if e.Policy != "" {
			rule = e.Policy + " " + e.Rule
		} else if sel, ok := strings.CutPrefix(e.Reason, "no ALLOW policy matched; selecting the destination: "); ok {
			rule = sel + " (no rule matched)"
		}
		from := c.from
		if spec, _ := m.Spec(c.from); spec.Outside {
			from += " (plaintext)"
		}
		fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\n", from, c.to, c.port, result, rule, e.Reason)
	}
	tw.Flush()
}

func tryCall(m *localmesh.Mesh, c demoCall) bool {
	conn, err := localmesh.Dial(m.Pods[c.from], fmt.Sprintf("%s:%d", m.Pods[c.to].IP, c.port), 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("hello")); err != nil {
		return false
	}
	buf := make([]byte, 5)
	_, err = io.ReadFull(conn, buf)
	return err == nil && string(buf) == "hello"
}

// decisionFor waits briefly for the destination side's access-log entry
// written after mark, or the source side's refusal of a call to one of
// ztunnel's own ports.
func decisionFor(log *lockedWriter, mark int) ztunnel.AccessEntry {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(bytes.NewReader(log.since(mark)))
		for sc.Scan() {
			var e ztunnel.AccessEntry
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			if e.Direction == "inbound" && e.Decision != "" {
				return e
			}
			if e.Flags == ztunnel.FlagLoop { // refused before any policy
				e.Reason = ztunnel.FlagLoop + ": " + e.Error
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ztunnel.AccessEntry{Reason: "no decision logged"}
}

// writeExplainInput writes the input of the frontend's call to postgres,
// built as ztunnel builds it (state.Snapshot.InboundInput), for `policy
// explain`.
func writeExplainInput(path string, m *localmesh.Mesh) {
	peer := state.Peer{
		Principal: "spiffe://cluster.local/ns/shop/sa/frontend",
		Addr:      netip.AddrPortFrom(m.Pods["frontend"].IP, 0),
	}
	in, _, err := m.State.InboundInput(peer, netip.AddrPortFrom(m.Pods["postgres"].IP, 5432))
	if err != nil {
		return
	}
	writeInput(path, in)
}

// writeExplainRequest writes the input of the checkout's GET /admin/users
// to the api service, built as the waypoint builds it
// (state.Snapshot.WaypointInput), for `policy explain`.
func writeExplainRequest(path string, m *localmesh.Mesh) {
	peer := state.Peer{
		Principal: "spiffe://cluster.local/ns/shop/sa/checkout",
		Addr:      netip.AddrPortFrom(m.Pods["checkout"].IP, 0),
	}
	req := &policy.Request{Method: "GET", Path: "/admin/users", Host: apiVIP, Protocol: "HTTP/1.1"}
	in, _, err := m.State.WaypointInput(peer, netip.AddrPortFrom(netip.MustParseAddr(apiVIP), 80), req)
	if err != nil {
		return
	}
	writeInput(path, in)
}

func writeInput(path string, in policy.Input) {
	b, _ := json.MarshalIndent(in, "", "  ")
	if f, err := createNew(path); err == nil {
		f.Write(b)
		f.Close()
	}
}

// watchAndRerun reloads the bundle on every change and runs the calls again.
func watchAndRerun(ctx context.Context, out io.Writer, m *localmesh.Mesh, log, wpLog *lockedWriter, issuer *demoIssuer, bundle string) error {
	last := policy.BundlesStamp([]string{bundle})
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "\nstopping: tearing the mesh down")
			return nil
		case <-time.After(time.Second):
		}
		stamp := policy.BundlesStamp([]string{bundle})
		if stamp == last {
			continue
		}
		last = stamp
		wp := m.Waypoints["waypoint"]
		gen, genErr := wp.PolicyGeneration(ctx)
		failed := false
		for node, engine := range m.Engines {
			if err := (policy.BundleFiles{Paths: []string{bundle}}).Load(ctx, engine); err != nil {
				fmt.Fprintf(out, "\n%s rejected the new policy (the last good one stays in force): %v\n", node, err)
				failed = true
				break
			}
		}
		if failed {
			continue
		}
		fmt.Fprintf(out, "\npolicy reloaded at %s:\n", time.Now().Format("15:04:05"))
		runCalls(out, m, log)
		wait, cancel := context.WithTimeout(ctx, 10*time.Second)
		if genErr == nil {
			genErr = wp.WaitPolicyAfter(wait, gen) // the waypoint polls the bundle itself
		}
		cancel()
		if genErr != nil {
			fmt.Fprintf(out, "\nthe waypoint did not load the new policy: %v\n", genErr)
			continue
		}
		runRequests(out, m, wpLog, issuer)
	}
}

// demoMetrics serves each node's registry on a free loopback port.
type demoMetrics struct {
	addrs   map[string]string
	servers []*http.Server
	serving sync.WaitGroup
}

func serveDemoMetrics(regs map[string]*prometheus.Registry) (*demoMetrics, error) {
	d := &demoMetrics{addrs: map[string]string{}}
	for node, reg := range regs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			d.Close()
			return nil, err
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		d.serving.Go(func() { srv.Serve(l) })
		d.addrs[node] = l.Addr().String()
		d.servers = append(d.servers, srv)
	}
	return d, nil
}

// Close stops the servers and waits until they have returned.
func (d *demoMetrics) Close() {
	for _, s := range d.servers {
		s.Close()
	}
	d.serving.Wait()
}

// lockedWriter is the access log file, also kept in memory for the table.
// accessLogs are the demo's two access logs, each a file created new in
// its directory: the ztunnels' and the waypoint's.
type accessLogs struct {
	ztunnel, waypoint         *lockedWriter
	ztunnelPath, waypointPath string
	files                     []*os.File
}

func openAccessLogs(dir string) (*accessLogs, error) {
	l := &accessLogs{ztunnelPath: filepath.Join(dir, "access.log"), waypointPath: filepath.Join(dir, "waypoint-access.log")}
	var err error
	if l.ztunnel, err = l.open(l.ztunnelPath, "access log"); err != nil {
		return nil, err
	}
	if l.waypoint, err = l.open(l.waypointPath, "waypoint access log"); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *accessLogs) open(path, what string) (*lockedWriter, error) {
	f, err := createNew(path)
	if err != nil {
		return nil, fmt.Errorf("demo: %s: %w", what, err)
	}
	l.files = append(l.files, f)
	return &lockedWriter{w: f}, nil
}

func (l *accessLogs) close() {
	for _, f := range l.files {
		f.Close()
	}
}

type lockedWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	return l.w.Write(p)
}

func (l *lockedWriter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Len()
}

func (l *lockedWriter) since(mark int) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes()[mark:])
}
