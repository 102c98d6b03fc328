package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"
)

// report is what the run prints and writes as JSON.
type report struct {
	Command string `json:"command"`
	// AESGCMCeiling is openssl's AES-128-GCM speed on 16 KiB blocks, one core, MB/s.
	AESGCMCeiling float64  `json:"aes_128_gcm_mb_per_s"`
	Rows          []row    `json:"rows"`
	Notes         []string `json:"notes"`
	// HTTP is the HTTP phase's figures (http.go), if it ran.
	HTTP *httpResult `json:"http,omitempty"`
}

// row is one metric; a nil figure was not measured on that path.
type row struct {
	Metric   string   `json:"metric"`
	Direct   *float64 `json:"direct"`
	HAProxy  *float64 `json:"haproxy_pair"`
	Regomesh *float64 `json:"regomesh"`
	// Ratio is regomesh / haproxy pair.
	Ratio *float64 `json:"regomesh_over_haproxy"`
}

func newRow(metric string, direct, haproxy, regomesh *float64) row {
	r := row{Metric: metric, Direct: direct, HAProxy: haproxy, Regomesh: regomesh}
	if haproxy != nil && regomesh != nil && *haproxy != 0 {
		r.Ratio = ptr(*regomesh / *haproxy)
	}
	return r
}

func ptr(v float64) *float64 { return &v }

func micros(d time.Duration) *float64 { return ptr(float64(d.Nanoseconds()) / 1e3) }

func newReport(cmd string, cfg config, ceiling float64, r *results, haproxyVersion string) *report {
	d, h, m := pathDirect, pathHAProxy, pathRegomesh
	added := func(of string, p func(latency) time.Duration) *float64 {
		return micros(p(r.rtt[of]) - p(r.rtt[d]))
	}
	p50 := func(l latency) time.Duration { return l.p50 }
	p99 := func(l latency) time.Duration { return l.p99 }
	md, mm := r.mem[d], r.mem[m]
	rep := &report{Command: cmd, AESGCMCeiling: ceiling}
	rep.Rows = []row{
		newRow("bulk, one stream (MB/s)", ptr(r.bulk[d]), ptr(r.bulk[h]), ptr(r.bulk[m])),
		newRow("1 KiB round trip p50 (µs)", micros(r.rtt[d].p50), micros(r.rtt[h].p50), micros(r.rtt[m].p50)),
		newRow("1 KiB round trip p99 (µs)", micros(r.rtt[d].p99), micros(r.rtt[h].p99), micros(r.rtt[m].p99)),
		newRow("  added vs direct, p50 (µs)", nil, added(h, p50), added(m, p50)),
		newRow("  added vs direct, p99 (µs)", nil, added(h, p99), added(m, p99)),
		newRow("new connections/s (connect, 1 B echo, close)", ptr(r.connRate[d]), ptr(r.connRate[h]), ptr(r.connRate[m])),
		newRow("  new mTLS connections/s (full handshake, 1 B echo)", nil, ptr(r.handshakes.haproxy), ptr(r.handshakes.regomesh)),
		newRow(fmt.Sprintf("Go heap in use before %d open (MiB)", mm.n), mib(md.heapBefore), nil, mib(mm.heapBefore)),
		newRow(fmt.Sprintf("Go heap in use with %d open (MiB)", mm.n), mib(md.heapAfter), nil, mib(mm.heapAfter)),
		newRow("  heap per open connection (KiB)", perConn(md.heapBefore, md.heapAfter, md.n), nil, perConn(mm.heapBefore, mm.heapAfter, mm.n)),
		newRow("  stacks per open connection (KiB)", perConn(md.stackBefore, md.stackAfter, md.n), nil, perConn(mm.stackBefore, mm.stackAfter, mm.n)),
		newRow("  goroutines per open connection", goroutines(md), nil, goroutines(mm)),
	}
	rep.Notes = notes(cfg, ceiling, r, haproxyVersion)
	return rep
}

func mib(b uint64) *float64 { return ptr(float64(b) / (1 << 20)) }

func perConn(before, after uint64, n int) *float64 {
	return ptr((float64(after) - float64(before)) / float64(n) / 1024)
}

func goroutines(m memory) *float64 {
	return ptr(float64(m.goAfter-m.goroutinesBefore) / float64(m.n))
}

func notes(cfg config, ceiling float64, r *results, haproxyVersion string) []string {
	md, mm := r.mem[pathDirect], r.mem[pathRegomesh]
	ztHeap := (float64(mm.heapAfter) - float64(mm.heapBefore) - (float64(md.heapAfter) - float64(md.heapBefore))) / float64(mm.n) / 1024
	ztStack := (float64(mm.stackAfter) - float64(mm.stackBefore) - (float64(md.stackAfter) - float64(md.stackBefore))) / float64(mm.n) / 1024
	return []string{
		fmt.Sprintf("AES-128-GCM ceiling (openssl speed -evp aes-128-gcm -seconds 1, 16 KiB blocks, one core): %.0f MB/s; "+
			"regomesh bulk is %.2f of it, the haproxy pair %.2f; regomesh bulk is %.2f of direct.",
			ceiling, r.bulk[pathRegomesh]/ceiling, r.bulk[pathHAProxy]/ceiling, r.bulk[pathRegomesh]/r.bulk[pathDirect]),
		"Paths: client pod on node-1 to server pod on node-2 (network namespaces, one fabric bridge); direct and haproxy " +
			"use two pods outside the mesh, regomesh two enrolled pods (nftables capture, HBONE over mutual TLS 1.3 with SPIRE SVIDs, policy allowing client->server).",
		"haproxy pair: " + haproxyVersion + ", one thread each; client side in the client pod on 127.0.0.1, mutual TLS 1.3 (TLS_AES_128_GCM_SHA256, ECDSA P-256) to the server side in the server pod, which forwards to the server on loopback.",
		"regomesh/haproxy: above 1 is better for throughput and connection rates, below 1 is better for latency.",
		plainNote(r),
		"Both ztunnels, SPIRE's Go clients, the servers and this client run IN THIS PROCESS (localmesh): the process's RSS is not a ztunnel's " +
			"(the proxy VmRSS rows are, from ztunnel processes). Go heap rows: Go HeapInuse/StackInuse after GC; the direct column is the application's own cost (client and server sides), " +
			fmt.Sprintf("so both ztunnels together cost %.1f KiB heap + %.1f KiB stacks per open tunnel (regomesh minus direct).", ztHeap, ztStack),
		connNote(cfg, r),
		handshakeNote(cfg, r),
		fmt.Sprintf("Round trips: %d after %d warm-up, one connection, nearest-rank percentiles. Bulk: one stream for %s, server-side bytes over first write to last byte read. MB = 10^6 bytes.",
			cfg.roundTrips, cfg.warmup, cfg.duration),
		"One run on a shared machine, all processes on the same cores: figures move between runs; compare ratios within a run, not across runs.",
	}
}

// plainNote reports the plain Go pair: the same two hops with ztunnel's
// copy loop and nothing else, the floor any pair of proxies stands on.
func plainNote(r *results) string {
	d, pl, m := r.rtt[pathDirect], r.rtt[pathPlain], r.rtt[pathRegomesh]
	return fmt.Sprintf("Floor of two user-space hops: a plain Go TCP relay pair on the same path (hbone.Relay both ways, no TLS, HTTP/2 or policy) "+
		"adds %.1f µs p50 / %.1f µs p99 over direct and moves %.0f MB/s in bulk; regomesh adds %.1f µs p50 over that pair (TLS, HTTP/2 framing, policy) and moves %.2fx its bytes.",
		*micros(pl.p50 - d.p50), *micros(pl.p99 - d.p99), r.bulk[pathPlain], *micros(m.p50 - pl.p50), r.bulk[pathRegomesh]/r.bulk[pathPlain])
}

// connNote says what a new connection costs on each path: the
// application's connections are not the proxies' TLS connections.
func connNote(cfg config, r *results) string {
	return fmt.Sprintf("New connections/s: %s per path, as the application sees them: a TCP connect direct; through the haproxy pair, "+
		"a new TLS 1.3 handshake between the haproxies, which by default resume their last session (PSK, no certificates); "+
		"through regomesh, a new HBONE stream on node-1's pooled mTLS connection, no handshake. Failed: %d direct, %d haproxy, %d regomesh. "+
		"The pooled stream-open rate alone: go test ./hbone -run '^$' -bench StreamOpen.",
		cfg.duration, r.connErrors[pathDirect], r.connErrors[pathHAProxy], r.connErrors[pathRegomesh])
}

// handshakeNote says how the new mTLS connections were made on each path.
func handshakeNote(cfg config, r *results) string {
	h := r.handshakes
	return fmt.Sprintf("New mTLS connections/s: %s per path, each a full mutual TLS 1.3 handshake (both certificates verified, no resumption), "+
		"a 1-byte echo and a close. regomesh: this process dials as node-1's ztunnel would, without its pool: from the client pod "+
		"(ztunnel's socket mark) to node-2's ztunnel on the server pod's port 15008, presenting the client pod's SVID from SPIRE, then the HTTP/2 "+
		"preface and SETTINGS and one CONNECT (policy, dial to the server); the application-to-ztunnel capture hop is not in it. "+
		"haproxy pair: the application connects to the client side's second port, whose backend has no-ssl-reuse; the application-to-haproxy "+
		"loopback hop is in it. Key exchange: Go's default for regomesh (X25519MLKEM768 since Go 1.24), OpenSSL's for haproxy "+
		"(X25519 before OpenSSL 3.5). Failed: %d haproxy, %d regomesh. Against crypto/tls alone: go test ./hbone -run '^$' -bench ConnOpen.",
		cfg.duration, h.failedHAProxy, h.failedRegomesh)
}

// Print writes the table and notes.
func (rep *report) Print(w io.Writer) {
	fmt.Fprintf(w, "$ %s\n\n", rep.Command)
	if len(rep.Rows) > 0 {
		rep.printRows(w)
	}
	if rep.HTTP != nil {
		rep.HTTP.Print(w)
	}
}

func (rep *report) printRows(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "metric\t direct\t haproxy pair\t regomesh\t regomesh/haproxy\t")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t\n", r.Metric, cell(r.Direct), cell(r.HAProxy), cell(r.Regomesh), ratio(r.Ratio))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

func cell(v *float64) string {
	if v == nil {
		return "-"
	}
	if *v >= 100 || *v <= -100 {
		return fmt.Sprintf("%.0f", *v)
	}
	return fmt.Sprintf("%.1f", *v)
}

func ratio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// WriteJSON writes the report to path.
func (rep *report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	return nil
}
