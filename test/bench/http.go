package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The HTTP phase: fortio (as a library, in a process of its own in the
// client pod) sends HTTP/1.1 GETs on kept-alive connections to a Go HTTP
// server answering 1 KiB, over four paths:
//
//   - direct: the plain pods, no proxy;
//   - L4 mesh: the mesh pods, through both ztunnels (HBONE);
//   - waypoint: the mesh client to the http service, whose state names
//     the bench's waypoint (the cmd/waypoint binary in a pod of its own on
//     node-1): ztunnel, waypoint (L7 policy and an HTTPRoute), ztunnel;
//   - haproxy L7: the plain pods through three haproxies on the same hops
//     (haproxy_http.go), the middle one in mode http, TLS between each.
const (
	httpPort = 9080
	httpVIP  = "10.96.1.10"
	// httpServices and httpRoutes are the waypoint's synthetic
	// configuration besides the benchmarked service and its route.
	httpServices = 1000
	httpRoutes   = 100
)

const (
	pathL4       = "L4 mesh"
	pathWaypoint = "waypoint"
	pathL7       = "haproxy L7"
)

// waypointPods join the bed's pods in the HTTP phase: the waypoint, and
// the plain pod the haproxy L7 baseline's middle proxy runs in.
var waypointPods = []localmesh.PodSpec{
	{Name: "waypoint", Node: "node-1", Namespace: "bench", ServiceAccount: "waypoint", Waypoint: true},
	{Name: "plain-waypoint", Node: "node-1", Namespace: "plain", ServiceAccount: "waypoint", Outside: true},
}

// httpPath is where a load generator in client sends its GETs.
type httpPath struct {
	name   string
	client *netbed.Pod
	url    string
}

func httpPaths(b *bed) []httpPath {
	return []httpPath{
		{pathDirect, b.pod("plain-client"), fmt.Sprintf("http://%s/bench", net.JoinHostPort(b.pod("plain-server").IP.String(), fmt.Sprint(httpPort)))},
		{pathL4, b.pod("client"), fmt.Sprintf("http://%s/bench", net.JoinHostPort(b.pod("server").IP.String(), fmt.Sprint(httpPort)))},
		{pathWaypoint, b.pod("client"), "http://" + httpVIP + "/bench"},
		{pathL7, b.pod("plain-client"), fmt.Sprintf("http://127.0.0.1:%d/bench", haproxyL7Port)},
	}
}

// httpResult is the HTTP phase's figures: for each connection count, the
// medians over the repeats of each path's percentiles and of each path's
// percentiles minus direct's in the same repeat; the medians of the
// maximum rates; the waypoint's and haproxy's memory; the L7 decision's
// share of the waypoint's CPU.
type httpResult struct {
	QPS        float64                         `json:"qps"`
	Duration   string                          `json:"duration"`
	Repeats    int                             `json:"repeats"`
	Latency    map[int]map[string][3]float64   `json:"latency_s"`       // conns -> path -> p50, p90, p99
	Added      map[int]map[string][3]float64   `json:"added_s"`         // conns -> path -> p50, p90, p99 minus direct's
	Max        map[string]float64              `json:"max_rps"`         // path -> requests/s
	MaxConns   int                             `json:"max_conns"`       // connections in the maximum runs
	Failed     map[string]int64                `json:"failed_requests"` // path -> non-200 answers and socket errors, all runs
	Memory     map[string]map[string]uint64    `json:"memory_bytes"`    // proxy -> idle, load, peak
	Decision   map[string]float64              `json:"cpu_share"`       // function -> share of the waypoint's CPU samples
	Runs       map[int]map[string][]loadResult `json:"runs"`            // conns (0: maximum) -> path -> every run
	Profile    string                          `json:"profile"`         // -http-cpuprofile, the profiles added up
	ProfileCPU string                          `json:"profile_cpu"`     // the CPU time the profiles sampled
}

func measureHTTP(ctx context.Context, cfg config) (*httpResult, error) {
	dir, err := os.MkdirTemp("", "rm-bench-waypoint-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	step("http", "building cmd/waypoint")
	bin, err := localmesh.Build(ctx, dir, "waypoint")
	if err != nil {
		return nil, err
	}
	routes := filepath.Join(dir, "routes.yaml")
	if err := os.WriteFile(routes, []byte(waypointRoutes()), 0o644); err != nil {
		return nil, err
	}
	step("http", fmt.Sprintf("starting a bed with a waypoint: %d services, %d routes", httpServices+1, httpRoutes+1))
	b, err := startBedWith(ctx, localmesh.Config{
		Prefix: bedPrefix("h"), Net: cfg.net, WaypointBinary: bin, Services: waypointServices(),
		WaypointFlags: []string{"--routes", routes, "--log-level", "warn"},
	})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	for _, name := range []string{"server", "plain-server"} {
		s, err := listenHTTP(b.pod(name))
		if err != nil {
			return nil, err
		}
		defer s.Close()
	}
	chain, err := startHAProxyL7(ctx, b)
	if err != nil {
		return nil, err
	}
	defer chain.Close()
	l7, err := chain.pid("plain-waypoint")
	if err != nil {
		return nil, err
	}
	procs := map[string]*proxy{pathWaypoint: {b.mesh.Waypoints["waypoint"].Pid(), "waypoint"}, pathL7: {l7, "haproxy"}}
	return (&httpRun{cfg: cfg, bed: b, procs: procs, dir: dir}).measure(ctx)
}

// httpRun is one HTTP phase in progress.
type httpRun struct {
	cfg   config
	bed   *bed
	procs map[string]*proxy // the middle proxies: waypoint, haproxy
	dir   string
	r     *httpResult
	// profiles are the waypoint's CPU profiles, one per maximum run.
	profiles []string
}

func (h *httpRun) measure(ctx context.Context) (*httpResult, error) {
	paths := httpPaths(h.bed)
	h.r = &httpResult{QPS: 1000, Duration: h.cfg.httpDuration.String(), Repeats: h.cfg.httpRepeats, MaxConns: 64,
		Latency: map[int]map[string][3]float64{}, Added: map[int]map[string][3]float64{}, Max: map[string]float64{},
		Failed: map[string]int64{}, Memory: map[string]map[string]uint64{}, Runs: map[int]map[string][]loadResult{}}
	for name := range h.procs {
		if err := h.memory(name, "idle"); err != nil {
			return nil, err
		}
	}
	for _, p := range paths {
		step(p.name, "HTTP warmup")
		if _, err := h.run(ctx, p, -1, load{QPS: 100, Conns: 4, Duration: time.Second}); err != nil {
			return nil, err
		}
	}
	for _, conns := range []int{16, 64} {
		if err := h.fixedRate(ctx, paths, conns); err != nil {
			return nil, err
		}
	}
	if err := h.maximum(ctx, []httpPath{paths[2], paths[3]}); err != nil {
		return nil, err
	}
	return h.r, nil
}

// fixedRate runs every path at 1,000 QPS over conns connections, repeats
// times, the paths' order rotated each time, and keeps the medians.
func (h *httpRun) fixedRate(ctx context.Context, paths []httpPath, conns int) error {
	for i := range h.cfg.httpRepeats {
		for j := range paths {
			p := paths[(i+j)%len(paths)]
			step(p.name, fmt.Sprintf("HTTP 1000 QPS, %d connections, run %d of %d", conns, i+1, h.cfg.httpRepeats))
			if _, err := h.run(ctx, p, conns, load{QPS: h.r.QPS, Conns: conns, Duration: h.cfg.httpDuration}); err != nil {
				return err
			}
		}
	}
	runs := h.r.Runs[conns]
	h.r.Latency[conns], h.r.Added[conns] = map[string][3]float64{}, map[string][3]float64{}
	for _, p := range paths {
		var lat, added [3][]float64
		for i, r := range runs[p.name] {
			d := runs[pathDirect][i]
			for k, v := range [3]float64{r.P50, r.P90, r.P99} {
				lat[k] = append(lat[k], v)
				added[k] = append(added[k], v-[3]float64{d.P50, d.P90, d.P99}[k])
			}
		}
		h.r.Latency[conns][p.name] = [3]float64{median(lat[0]), median(lat[1]), median(lat[2])}
		h.r.Added[conns][p.name] = [3]float64{median(added[0]), median(added[1]), median(added[2])}
	}
	return nil
}

// maximum runs the waypoint and haproxy paths as fast as they answer,
// alternating, repeats times; every waypoint run is profiled, and both
// middle proxies' memory is read after their first run.
func (h *httpRun) maximum(ctx context.Context, paths []httpPath) error {
	conns := h.r.MaxConns
	for i := range h.cfg.httpRepeats {
		for j := range paths {
			p := paths[(i+j)%len(paths)]
			step(p.name, fmt.Sprintf("HTTP maximum rate, %d connections, run %d of %d", conns, i+1, h.cfg.httpRepeats))
			profile := make(chan error, 1)
			if p.name == pathWaypoint {
				go func() { profile <- h.profileWaypoint(ctx, i) }()
			} else {
				profile <- nil
			}
			if _, err := h.run(ctx, p, 0, load{Conns: conns, Duration: h.cfg.httpDuration}); err != nil {
				return err
			}
			if err := <-profile; err != nil {
				return err
			}
			if i == 0 {
				if err := h.memory(p.name, "load"); err != nil {
					return err
				}
			}
		}
	}
	for _, p := range paths {
		var rates []float64
		for _, r := range h.r.Runs[0][p.name] {
			rates = append(rates, r.ActualQPS)
		}
		h.r.Max[p.name] = median(rates)
	}
	return h.decisionShare(ctx)
}

// run runs l on p, keeping the result under key (a connection count, 0
// for a maximum run, -1 for one not kept).
func (h *httpRun) run(ctx context.Context, p httpPath, key int, l load) (loadResult, error) {
	l.URL = p.url
	r, err := runLoad(ctx, p.client, l)
	if err != nil {
		return r, fmt.Errorf("bench: %s: %w", p.name, err)
	}
	if r.Failed > 0 && key < 0 {
		return r, fmt.Errorf("bench: %s: %d of %d warmup requests failed", p.name, r.Failed, r.Requests)
	}
	h.r.Failed[p.name] += r.Failed
	if key >= 0 {
		if h.r.Runs[key] == nil {
			h.r.Runs[key] = map[string][]loadResult{}
		}
		h.r.Runs[key][p.name] = append(h.r.Runs[key][p.name], r)
	}
	return r, nil
}

// memory reads the path's middle proxy's VmRSS as when ("idle", or
// "load" right after a maximum run), and its VmHWM as "peak".
func (h *httpRun) memory(path, when string) error {
	st, err := readStatus(h.procs[path])
	if err != nil {
		return err
	}
	if h.r.Memory[path] == nil {
		h.r.Memory[path] = map[string]uint64{}
	}
	h.r.Memory[path][when], h.r.Memory[path]["peak"] = st.rss, st.hwm
	return nil
}

// profileSeconds is the length of each of the waypoint's CPU profiles,
// one inside each maximum run, within localmesh's 5s admin client
// timeout; their samples are added up.
const profileSeconds = 4

// profileWaypoint takes a CPU profile of the waypoint process from its
// admin endpoint (pprof, on loopback in its pod) into h.dir.
func (h *httpRun) profileWaypoint(ctx context.Context, run int) error {
	status, body, err := h.bed.mesh.Waypoints["waypoint"].Get(ctx, localmesh.AdminPort, fmt.Sprintf("/debug/pprof/profile?seconds=%d", profileSeconds))
	if err != nil {
		return fmt.Errorf("bench: waypoint profile: %w", err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("bench: waypoint profile: %d %s", status, body)
	}
	path := filepath.Join(h.dir, fmt.Sprintf("waypoint-%d.pprof", run))
	h.profiles = append(h.profiles, path)
	return os.WriteFile(path, body, 0o644)
}

// decisionShare reads from the waypoint's profiles, added up, the share
// of its CPU samples spent deciding requests, and keeps the sum in
// -http-cpuprofile.
func (h *httpRun) decisionShare(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "go", append([]string{"tool", "pprof", "-top", "-cum", "-nodecount=100000"}, h.profiles...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bench: go tool pprof %v: %w\n%s", h.profiles, err, tail(out))
	}
	if h.r.Decision, err = parseCumShares(out, decisionFuncs); err != nil {
		return err
	}
	if m := totalSamples.FindSubmatch(out); m != nil {
		h.r.ProfileCPU = string(m[1])
	}
	if h.r.Profile = h.cfg.httpProfile; h.r.Profile != "" {
		args := append([]string{"tool", "pprof", "-proto", "-output", h.r.Profile}, h.profiles...)
		if out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("bench: go tool pprof -proto: %w\n%s", err, tail(out))
		}
	}
	return nil
}

var totalSamples = regexp.MustCompile(`Total samples = (\S+)`)

// decisionFuncs are what the L7 decision costs, in the profile: the
// waypoint's authorize (the engine's Decide and the decision's
// bookkeeping) and RequestOf (the input document's request).
var decisionFuncs = []string{
	"github.com/regomesh/regomesh/waypoint.(*Waypoint).authorize",
	"github.com/regomesh/regomesh/policy.(*Engine).Decide",
	"github.com/regomesh/regomesh/waypoint.RequestOf",
}

// topLine is a row of pprof -top: flat, flat%, sum%, cum, cum%, name.
var topLine = regexp.MustCompile(`^\s*\S+\s+\S+%\s+\S+%\s+\S+\s+([0-9.]+)%\s+(.+)$`)

func parseCumShares(out []byte, funcs []string) (map[string]float64, error) {
	shares := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		m := topLine.FindStringSubmatch(line)
		if m == nil || !slices.Contains(funcs, strings.TrimSpace(m[2])) {
			continue
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return nil, fmt.Errorf("bench: pprof line %q: %w", line, err)
		}
		shares[strings.TrimSpace(m[2])] = v / 100
	}
	for _, f := range funcs {
		if _, ok := shares[f]; !ok {
			shares[f] = 0 // never sampled
		}
	}
	return shares, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// httpServer answers every GET with 1 KiB.
type httpServer struct{ srv *http.Server }

var kib = bytes.Repeat([]byte("x"), 1024)

func listenHTTP(p *netbed.Pod) (*httpServer, error) {
	l, err := localmesh.Listen(p, fmt.Sprintf(":%d", httpPort))
	if err != nil {
		return nil, fmt.Errorf("bench: listen in %s: %w", p.Name, err)
	}
	s := &httpServer{srv: &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1024")
		w.Write(kib)
	})}}
	go s.srv.Serve(l)
	return s, nil
}

func (s *httpServer) Close() error {
	if err := s.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// waypointServices are the benchmarked http service (through the waypoint,
// to the server pod's HTTP server) and httpServices synthetic ones the
// waypoint serves too, without endpoints.
func waypointServices() []state.LocalService {
	svcs := []state.LocalService{{
		Name: "http", Namespace: "bench", VIPs: []string{httpVIP}, Selector: map[string]string{"app": "server"},
		Waypoint: "bench/waypoint", Ports: []state.ServicePort{{Port: 80, TargetPort: httpPort, Name: "http"}},
	}}
	base := netip.MustParseAddr("10.97.0.1")
	for i := range httpServices {
		svcs = append(svcs, state.LocalService{
			Name: fmt.Sprintf("svc-%04d", i), Namespace: "bench", VIPs: []string{nthAddr(base, i).String()},
			Selector: map[string]string{"app": fmt.Sprintf("svc-%04d", i)}, Waypoint: "bench/waypoint",
			Ports: []state.ServicePort{{Port: 80, TargetPort: 8080, Name: "http"}},
		})
	}
	return svcs
}

// waypointRoutes are an HTTPRoute for the http service (every path to
// itself, so that each request is routed) and httpRoutes for synthetic
// services, each with a path match, a header match and two weighted
// backends.
func waypointRoutes() string {
	var b strings.Builder
	b.WriteString(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: http, port: 80}]
`)
	for i := range httpRoutes {
		fmt.Fprintf(&b, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route-%[1]d, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: svc-%04[1]d}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: svc-%04[2]d, port: 80}]
  - backendRefs: [{name: svc-%04[1]d, port: 80, weight: 90}, {name: svc-%04[2]d, port: 80, weight: 10}]
`, i, i+httpRoutes)
	}
	return b.String()
}
