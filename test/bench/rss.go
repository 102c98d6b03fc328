package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The memory phase answers issue #6: a ztunnel's resident memory with a
// cluster's worth of workloads in its state and 1,000 tunnels open. It
// needs ztunnels that are processes of their own, so it runs on a second
// bed where both nodes run the cmd/ztunnel binary built from this tree
// (localmesh ProcessNodes), with a fresh haproxy pair beside them measured
// the same way.

// Shape of the synthetic state: Deployments of replicasPerApp pods spread
// over syntheticNodes nodes other than the bed's and syntheticNamespaces
// namespaces, one Service per Deployment; addresses in 172.16.0.0/12,
// away from the bed's 10.<net>.0.0/16.
const (
	replicasPerApp      = 5
	syntheticNodes      = 50
	syntheticNamespaces = 20
	maxWorkloads        = 500_000 // workload IPs fit in 172.16.0.0/13
)

var (
	workloadBase = netip.MustParseAddr("172.16.0.0")
	serviceBase  = netip.MustParseAddr("172.24.0.0")
	appNames     = []string{"cart", "checkout", "payments", "catalog", "search", "users", "orders", "inventory", "shipping", "reviews"}
)

// procMemory is one proxy process's memory in bytes.
type procMemory struct {
	// idle is VmRSS before the held connections, open VmRSS with them.
	idle, open uint64
	// peak is VmHWM with the connections open: the most it ever held.
	peak uint64
	// file and anon split open: pages of the binary and libraries mapped
	// in (RssFile) and the process's own memory, heap and stacks (RssAnon).
	file, anon uint64
}

// rssResult is the memory phase's figures, by path (haproxy pair,
// regomesh), for the proxy on each side.
type rssResult struct {
	tunnels, workloads, services int
	server, client               map[string]procMemory
	// format of the local config the ztunnels read: YAML or JSON.
	format string
}

func measureRSS(ctx context.Context, cfg config) (*rssResult, error) {
	dir, err := os.MkdirTemp("", "rm-bench-ztunnel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	step("memory", "building cmd/ztunnel")
	bin, err := localmesh.Build(ctx, dir, "ztunnel")
	if err != nil {
		return nil, err
	}
	workloads, services := syntheticState(cfg.workloads)
	step("memory", fmt.Sprintf("starting a bed with both ztunnels as processes, %d synthetic workloads", len(workloads)))
	b, err := startBedWith(ctx, localmesh.Config{
		Prefix: bedPrefix("m"), Net: cfg.net, ProcessNodes: []string{"node-1", "node-2"}, ZtunnelBinary: bin,
		Workloads: workloads, Services: services, JSONState: cfg.jsonState,
	})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	pair, err := startHAProxyPair(ctx, b)
	if err != nil {
		return nil, err
	}
	defer pair.Close()
	r := &rssResult{tunnels: cfg.tunnels, workloads: len(b.mesh.State.Workloads), services: len(services),
		server: map[string]procMemory{}, client: map[string]procMemory{}, format: "YAML"}
	if cfg.jsonState {
		r.format = "JSON"
	}
	for _, p := range paths(b, pair) {
		server, client, err := proxyProcesses(b, pair, p.name)
		if err != nil {
			return nil, err
		}
		if server == nil {
			continue
		}
		step(p.name, fmt.Sprintf("proxy memory with %d connections", cfg.tunnels))
		mems, err := holdMeasured(ctx, p, cfg.tunnels, server, client)
		if err != nil {
			return nil, err
		}
		r.server[p.name], r.client[p.name] = mems[0], mems[1]
	}
	return r, nil
}

// proxy is a process whose memory is read: pid, and the name the kernel
// must report for it, so that a wrapper is never measured instead.
type proxy struct {
	pid  int
	name string
}

// proxyProcesses are the server-side and client-side proxies of the named
// path, or nil for a path without proxy processes.
func proxyProcesses(b *bed, pair *haproxyPair, path string) (server, client *proxy, err error) {
	switch path {
	case pathHAProxy:
		s, serr := pair.pid("plain-server")
		c, cerr := pair.pid("plain-client")
		return &proxy{s, "haproxy"}, &proxy{c, "haproxy"}, errors.Join(serr, cerr)
	case pathRegomesh:
		ps := b.mesh.Processes
		return &proxy{ps["node-2"].Pid(), "ztunnel"}, &proxy{ps["node-1"].Pid(), "ztunnel"}, nil
	}
	return nil, nil, nil
}

// holdMeasured reads the proxies' memory, holds n echoed connections open
// on p, and reads it again once they have settled.
func holdMeasured(ctx context.Context, p path, n int, procs ...*proxy) ([]procMemory, error) {
	mems := make([]procMemory, len(procs))
	for i, pr := range procs {
		st, err := readStatus(pr)
		if err != nil {
			return nil, err
		}
		mems[i].idle = st.rss
	}
	conns, err := openEchoed(ctx, p, n)
	defer closeAll(conns)
	if err != nil {
		return nil, err
	}
	settle()
	for i, pr := range procs {
		st, err := readStatus(pr)
		if err != nil {
			return nil, err
		}
		mems[i].open, mems[i].peak = st.rss, st.hwm
		mems[i].file, mems[i].anon = st.file, st.anon
	}
	return mems, nil
}

// pid is the process ID of the pair's haproxy in the named pod.
func (p *haproxyPair) pid(pod string) (int, error) {
	conf := filepath.Join(p.dir, pod+".cfg")
	for _, cmd := range p.procs {
		if slices.Contains(cmd.Args, conf) {
			return cmd.Process.Pid, nil
		}
	}
	return 0, fmt.Errorf("bench: no haproxy runs %s", conf)
}

// procStatus is what /proc/<pid>/status says of a process's memory.
type procStatus struct {
	name       string
	rss, hwm   uint64 // bytes
	file, anon uint64 // bytes; RssFile and RssAnon, parts of rss
}

func readStatus(pr *proxy) (procStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pr.pid))
	if err != nil {
		return procStatus{}, fmt.Errorf("bench: %s memory: %w", pr.name, err)
	}
	st, err := parseStatus(b)
	if err != nil {
		return st, fmt.Errorf("bench: /proc/%d/status: %w", pr.pid, err)
	}
	if st.name != pr.name {
		return st, fmt.Errorf("bench: process %d is %q, not %s", pr.pid, st.name, pr.name)
	}
	return st, nil
}

// parseStatus reads Name, VmRSS and VmHWM, and RssFile and RssAnon (in kB,
// that is KiB) from the text of /proc/<pid>/status; the first three must
// be there.
func parseStatus(b []byte) (procStatus, error) {
	var st procStatus
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, _ := strings.Cut(sc.Text(), ":")
		value = strings.TrimSpace(value)
		var dst *uint64
		switch key {
		case "Name":
			st.name = value
			found++
			continue
		case "VmRSS":
			dst = &st.rss
		case "VmHWM":
			dst = &st.hwm
		case "RssFile", "RssAnon":
			dst = &st.file
			if key == "RssAnon" {
				dst = &st.anon
			}
			found-- // optional: not counted below
		default:
			continue
		}
		kib, err := strconv.ParseUint(strings.TrimSuffix(value, " kB"), 10, 64)
		if err != nil || !strings.HasSuffix(value, " kB") {
			return st, fmt.Errorf("%s: %q is not a size in kB", key, value)
		}
		*dst = kib << 10
		found++
	}
	if found != 3 {
		return st, fmt.Errorf("no Name, VmRSS and VmHWM (a kernel thread, or an exited process?)")
	}
	return st, nil
}

// syntheticState is n workloads as a cluster's control plane would
// describe them, and a Service per Deployment.
func syntheticState(n int) ([]state.LocalWorkload, []state.LocalService) {
	workloads := make([]state.LocalWorkload, 0, n)
	var services []state.LocalService
	for i := range n {
		d := i / replicasPerApp
		app := fmt.Sprintf("%s-%d", appNames[d%len(appNames)], d/len(appNames))
		namespace := fmt.Sprintf("team-%02d", d%syntheticNamespaces)
		hash := fmt.Sprintf("%09x", uint64(d+1)*0x9e3779b1)[:9]
		if i%replicasPerApp == 0 {
			services = append(services, state.LocalService{
				Name: app, Namespace: namespace, VIPs: []string{nthAddr(serviceBase, d).String()},
				Ports: []state.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": app},
			})
		}
		workloads = append(workloads, state.LocalWorkload{
			UID:  podUID(i),
			Name: fmt.Sprintf("%s-%s-%05x", app, hash, uint32(i+1)*40503&0xfffff), Namespace: namespace,
			ServiceAccount: app, IPs: []string{nthAddr(workloadBase, i).String()},
			Node:     fmt.Sprintf("node-%d", 3+i%syntheticNodes),
			Labels:   map[string]string{"app": app, "version": "v1", "pod-template-hash": hash},
			Protocol: state.HBONE,
		})
	}
	return workloads, services
}

// nthAddr is base + i + 1.
func nthAddr(base netip.Addr, i int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(i) + 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// podUID is a UUID-shaped (version 4 layout) pod UID, fixed per index.
func podUID(i int) string {
	x := uint64(i+1) * 0x9e3779b97f4a7c15
	return fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", uint32(x>>32), uint16(x>>16), uint16(x)&0xfff, uint16(x>>4)&0xfff, x&0xffffffffffff)
}

// addRSS adds the memory phase's rows and note.
func (rep *report) addRSS(r *rssResult) {
	h, m := pathHAProxy, pathRegomesh
	for _, side := range []struct {
		name string
		mem  map[string]procMemory
	}{{"server side", r.server}, {"client side", r.client}} {
		hm, mm := side.mem[h], side.mem[m]
		rep.Rows = append(rep.Rows,
			newRow(fmt.Sprintf("proxy VmRSS idle, %s (MiB)", side.name), nil, mib(hm.idle), mib(mm.idle)),
			newRow(fmt.Sprintf("proxy VmRSS with %d open, %s (MiB)", r.tunnels, side.name), nil, mib(hm.open), mib(mm.open)),
			newRow("  VmHWM, the peak so far (MiB)", nil, mib(hm.peak), mib(mm.peak)),
			newRow("  VmRSS per open connection (KiB)", nil, perConn(hm.idle, hm.open, r.tunnels), perConn(mm.idle, mm.open, r.tunnels)),
		)
	}
	mb := func(b uint64) float64 { return float64(b) / 1e6 }
	server, client := r.server[m], r.client[m]
	rep.Notes = append(rep.Notes,
		fmt.Sprintf("Proxy memory: VmRSS and VmHWM from /proc/<pid>/status of each proxy process, nothing forced (no GC). "+
			"Measured on a second bed where both ztunnels are the cmd/ztunnel binary built from this tree, each a process in its node's "+
			"namespace set up through its flags and files only, with %d workloads in their state (a %s local config: the bed's 4 pods and %d synthetic ones: "+
			"Deployments of %d replicas over %d other nodes and %d namespaces, with labels) and %d services; a fresh haproxy pair in the "+
			"same bed is measured the same way. Idle: ready, pods enrolled, SVIDs held, no connection through it yet (haproxy: its start-up probes). "+
			"Then %d connections from the client pod to the server, each proven by a 1-byte echo, held open and idle; read 2s later (after 100ms without data a ztunnel relay gives up its goroutines until data comes). "+
			"Server side: node-2's ztunnel, haproxy in the server pod; client side: node-1's ztunnel, haproxy in the client pod. "+
			"regomesh carries the connections as HBONE streams, at most 100 per mTLS connection; haproxy as one TLS connection each.",
			r.workloads, r.format, r.workloads-len(pods), replicasPerApp, syntheticNodes, syntheticNamespaces, r.services, r.tunnels),
		fmt.Sprintf("Issue #6 asks for a ztunnel under 40 MB with 1,000 workloads and 1,000 open tunnels. This run (%d workloads, %d tunnels): "+
			"node-2's ztunnel %.1f MB idle, %.1f MB with the tunnels open, peak %.1f MB; node-1's %.1f, %.1f, peak %.1f MB (MB = 10^6 bytes). "+
			"With the tunnels open, node-2's RSS is %.1f MB of mapped binary and libraries (RssFile: code and read-only data the kernel "+
			"mapped in; about a third of ztunnel's code is OPA's evaluator and the libraries its builtins bring, by go tool nm -size) and %.1f MB of its own memory (RssAnon: heap and goroutine stacks); haproxy's %.1f and %.1f MB.",
			r.workloads, r.tunnels, mb(server.idle), mb(server.open), mb(server.peak), mb(client.idle), mb(client.open), mb(client.peak),
			mb(server.file), mb(server.anon), mb(r.server[h].file), mb(r.server[h].anon)),
	)
}
