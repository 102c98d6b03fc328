// Command bench measures regomesh's data path against baselines measured
// in the same run, on the same kind of bed (localmesh: two nodes as
// network namespaces, real SPIRE, both ztunnels in this process):
//
//   - direct TCP between two pods outside the mesh;
//   - a pair of haproxy TLS 1.3 proxies between the same two pods;
//   - a plain Go relay pair on the same two hops (no TLS, no HTTP/2):
//     the floor under any pair of user-space proxies on this machine;
//   - `openssl speed -evp aes-128-gcm` as the per-core ceiling.
//
// The proxies' memory is measured next, on a second bed where both
// ztunnels are the cmd/ztunnel binary (a process each, in its node's
// namespace) with -workloads synthetic workloads in their state, beside
// a fresh haproxy pair: VmRSS idle and with -tunnels connections open.
//
// Last, on a third bed with a waypoint, the HTTP phase (http.go): fortio
// at 1,000 QPS over 16 and 64 kept-alive connections, and at its maximum,
// through the L4 mesh, the waypoint, and an haproxy L7 chain, with the
// waypoint's memory and a CPU profile of it.
//
// It prints a table and notes, and writes them as JSON with -json. It is
// a report, not a test: nothing is asserted. It needs root and bin/spire-*
// (make spire); run it with `make bench-mesh` or `go run ./test/bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// config is what the flags set.
type config struct {
	// duration of the bulk and connection-rate runs.
	duration time.Duration
	// roundTrips measured per path, after warmup.
	roundTrips, warmup int
	// tunnels held open for the memory figures.
	tunnels int
	// workloads is how many synthetic workloads the memory phase's
	// ztunnel processes hold in their state, besides the bed's pods.
	workloads int
	// jsonPath, if set, receives the report as JSON.
	jsonPath string
	// net picks the bed's addresses, 10.<net>.0.0/16.
	net int
	// cpuProfile, if set, receives a CPU profile of the regomesh bulk run.
	cpuProfile string
	// memoryOnly runs only the memory phase (its own bed and haproxy pair).
	memoryOnly bool
	// jsonState: the memory phase's ztunnels read their state as JSON.
	jsonState bool
	// http runs the HTTP phase (http.go); httpOnly runs only it.
	http, httpOnly bool
	// httpDuration is each HTTP run's length, httpRepeats how many of
	// each are run.
	httpDuration time.Duration
	httpRepeats  int
	// httpProfile, if set, keeps the waypoint's CPU profile there.
	httpProfile string
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of each bulk and connection-rate run")
	flag.IntVar(&cfg.roundTrips, "roundtrips", 20000, "1 KiB round trips measured per path")
	flag.IntVar(&cfg.warmup, "warmup", 2000, "round trips before measuring")
	flag.IntVar(&cfg.tunnels, "tunnels", 1000, "connections held open for the memory figures")
	flag.IntVar(&cfg.workloads, "workloads", 1000, fmt.Sprintf("synthetic workloads in the ztunnel processes' state for the RSS figures (at most %d)", maxWorkloads))
	flag.StringVar(&cfg.jsonPath, "json", "", "also write the report as JSON to this file")
	flag.IntVar(&cfg.net, "net", 250, "bed addresses 10.<net>.0.0/16 (inside its own namespaces)")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the regomesh bulk run (both ztunnels) to this file")
	flag.BoolVar(&cfg.memoryOnly, "memory-only", false, "run only the proxy memory phase (ztunnel processes and a haproxy pair on their own bed)")
	flag.BoolVar(&cfg.jsonState, "state-json", false, "the memory phase's ztunnels read their local config as JSON, not YAML")
	flag.BoolVar(&cfg.http, "http", true, "run the HTTP phase: fortio at 1,000 QPS and at its maximum through the L4 mesh, the waypoint and an haproxy L7 chain")
	flag.BoolVar(&cfg.httpOnly, "http-only", false, "run only the HTTP phase")
	flag.DurationVar(&cfg.httpDuration, "http-duration", 5*time.Second, "length of each HTTP run")
	flag.IntVar(&cfg.httpRepeats, "http-repeats", 3, "runs of each HTTP measurement; the report gives their medians")
	flag.StringVar(&cfg.httpProfile, "http-cpuprofile", "", "keep the waypoint's CPU profile, taken during its first maximum-rate run, in this file")
	loadgen := flag.String("loadgen", "", "internal: run one fortio load (JSON) in this process and print its result; the bench starts itself so in a client pod")
	flag.Parse()
	if *loadgen != "" {
		if err := loadgenMain(*loadgen, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, command()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		stop()
		os.Exit(1)
	}
}

// command is how this run was invoked, for the report.
func command() string {
	return "go run ./test/bench " + strings.Join(os.Args[1:], " ")
}

// measureDataPath measures throughput, latency and connection rates on
// the first bed, where both ztunnels run in this process.
func measureDataPath(ctx context.Context, cfg config, cmd string) (*report, error) {
	ceiling, err := aesGCMSpeed(ctx)
	if err != nil {
		return nil, err
	}
	bed, err := startBed(ctx, cfg.net)
	if err != nil {
		return nil, err
	}
	defer bed.Close()
	pair, err := startHAProxyPair(ctx, bed)
	if err != nil {
		return nil, err
	}
	defer pair.Close()
	r, err := measureAll(ctx, cfg, bed, pair)
	if err != nil {
		return nil, err
	}
	return newReport(cmd, cfg, ceiling, r, pair.Version), nil
}

// run sets up the bed and the baselines, measures, and reports; every
// process and namespace it starts is gone when it returns.
func run(ctx context.Context, cfg config, cmd string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, nftables): run it as root or with sudo")
	}
	if cfg.workloads < 0 || cfg.workloads > maxWorkloads {
		return fmt.Errorf("-workloads %d: between 0 and %d", cfg.workloads, maxWorkloads)
	}
	rep := &report{Command: cmd}
	if !cfg.memoryOnly && !cfg.httpOnly {
		var err error
		if rep, err = measureDataPath(ctx, cfg, cmd); err != nil {
			return err
		}
	}
	if !cfg.httpOnly {
		rss, err := measureRSS(ctx, cfg)
		if err != nil {
			return err
		}
		rep.addRSS(rss)
	}
	if (cfg.http && !cfg.memoryOnly) || cfg.httpOnly {
		h, err := measureHTTP(ctx, cfg)
		if err != nil {
			return err
		}
		rep.HTTP = h
	}
	rep.Print(os.Stdout)
	if cfg.jsonPath != "" {
		return rep.WriteJSON(cfg.jsonPath)
	}
	return nil
}
