package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
)

// path is one way from a client pod to a benchmark server.
type path struct {
	name   string
	client *netbed.Pod
	addr   string
	server *server
}

const (
	pathDirect   = "direct"
	pathHAProxy  = "haproxy pair"
	pathRegomesh = "regomesh"
	pathPlain    = "plain Go pair"
)

func paths(b *bed, pair *haproxyPair) []path {
	return []path{
		{pathDirect, b.pod("plain-client"), b.target("plain-server"), b.servers["plain-server"]},
		{pathHAProxy, b.pod("plain-client"), pair.Addr(), b.servers["plain-server"]},
		{pathRegomesh, b.pod("client"), b.target("server"), b.servers["server"]},
		{pathPlain, b.pod("plain-client"), b.plain.Addr(), b.servers["plain-server"]},
	}
}

// results are the raw figures, by path name.
type results struct {
	bulk map[string]float64 // MB/s
	rtt  map[string]latency
	// connRate is new connections per second as the application sees
	// them (direct, haproxy pair, regomesh); connErrors the failed ones.
	connRate   map[string]float64
	connErrors map[string]int
	// handshakes are new mutual-TLS connections per second (haproxy pair, regomesh).
	handshakes handshakes
	mem        map[string]memory // direct and regomesh
}

// latency of 1 KiB round trips.
type latency struct{ p50, p99 time.Duration }

// memory is this process's Go heap and stacks before and after holding
// n connections open.
type memory struct {
	n                         int
	heapBefore, heapAfter     uint64
	stackBefore, stackAfter   uint64
	goroutinesBefore, goAfter int
}

func measureAll(ctx context.Context, cfg config, b *bed, pair *haproxyPair) (*results, error) {
	r := &results{bulk: map[string]float64{}, rtt: map[string]latency{}, mem: map[string]memory{}}
	ps := paths(b, pair)
	for _, p := range ps {
		step(p.name, "1 KiB round trips")
		l, err := roundTrips(ctx, p, cfg.warmup, cfg.roundTrips)
		if err != nil {
			return nil, err
		}
		r.rtt[p.name] = l
	}
	for _, p := range []path{ps[0], ps[2]} {
		step(p.name, fmt.Sprintf("holding %d connections", cfg.tunnels))
		m, err := holdOpen(ctx, p, cfg.tunnels)
		if err != nil {
			return nil, err
		}
		r.mem[p.name] = m
	}
	for _, p := range ps {
		step(p.name, "bulk throughput")
		stop, err := profileIf(cfg.cpuProfile != "" && p.name == pathRegomesh, cfg.cpuProfile)
		if err != nil {
			return nil, err
		}
		mbps, err := bulk(ctx, p, cfg.duration)
		if perr := stop(); err == nil {
			err = perr
		}
		if err != nil {
			return nil, err
		}
		r.bulk[p.name] = mbps
	}
	r.connRate, r.connErrors = map[string]float64{}, map[string]int{}
	for _, p := range []path{ps[0], ps[1], ps[2]} {
		step(p.name, "new connections")
		rate, failed, err := connRate(ctx, p, cfg.duration)
		if err != nil {
			return nil, err
		}
		r.connRate[p.name], r.connErrors[p.name] = rate, failed
	}
	var err error
	r.handshakes, err = measureHandshakes(ctx, b, pair, cfg.duration)
	return r, err
}

// profileIf starts a CPU profile into file when on is true; the returned
// function stops it and closes the file.
func profileIf(on bool, file string) (stop func() error, err error) {
	if !on {
		return func() error { return nil }, nil
	}
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("bench: cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

func step(path, what string) { fmt.Fprintf(os.Stderr, "bench: %s: %s\n", path, what) }

// open dials p from its client pod and sends the mode byte.
func open(p path, mode byte) (net.Conn, error) {
	c, err := localmesh.Dial(p.client, p.addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("bench: %s: dial %s from %s: %w", p.name, p.addr, p.client.Name, err)
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: %s: %w", p.name, err)
	}
	return c, nil
}

// roundTrips times n 1 KiB echoes on one connection after warmup.
func roundTrips(ctx context.Context, p path, warmup, n int) (latency, error) {
	c, err := open(p, modeEcho)
	if err != nil {
		return latency{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	msg, buf := make([]byte, 1024), make([]byte, 1024)
	samples := make([]time.Duration, 0, n)
	for i := range warmup + n {
		if i%256 == 0 && ctx.Err() != nil {
			return latency{}, ctx.Err()
		}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return latency{}, fmt.Errorf("bench: %s: round trip %d: %w", p.name, i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return latency{}, fmt.Errorf("bench: %s: round trip %d: %w", p.name, i, err)
		}
		if i >= warmup {
			samples = append(samples, time.Since(start))
		}
	}
	slices.Sort(samples)
	return latency{p50: percentile(samples, 50), p99: percentile(samples, 99)}, nil
}

// bulk sends one stream for d and returns the server's view of it in
// MB/s: bytes received over the time from the first write to the last
// byte read.
func bulk(ctx context.Context, p path, d time.Duration) (float64, error) {
	c, err := open(p, modeSink)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 128<<10)
	start := time.Now()
	c.SetWriteDeadline(start.Add(d + 30*time.Second))
	for time.Since(start) < d && ctx.Err() == nil {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, fmt.Errorf("bench: %s: bulk write: %w", p.name, err)
		}
	}
	c.Close()
	select {
	case r := <-p.server.sinks:
		return float64(r.bytes) / r.last.Sub(start).Seconds() / 1e6, nil
	case <-time.After(30 * time.Second):
		return 0, fmt.Errorf("bench: %s: the server never saw the bulk stream end", p.name)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// connRate opens connections for d, each a connect, a 1-byte echo and a
// close, and returns how many completed per second.
func connRate(ctx context.Context, p path, d time.Duration) (rate float64, failed int, err error) {
	var done int
	var elapsed time.Duration
	err = localmesh.InPod(p.client, func() error {
		start := time.Now()
		for time.Since(start) < d && ctx.Err() == nil {
			if err := pingOnce(p.addr); err != nil {
				if failed++; failed > 100 {
					return fmt.Errorf("bench: %s: more than 100 failed connections, last: %w", p.name, err)
				}
				continue
			}
			done++
		}
		elapsed = time.Since(start)
		return ctx.Err()
	})
	return float64(done) / elapsed.Seconds(), failed, err
}

// pingOnce connects to addr, echoes one byte and closes. It runs in the
// client pod's thread (localmesh.InPod).
func pingOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return ping(c)
}

func ping(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{modeEcho, 'x'}); err != nil {
		return err
	}
	b := make([]byte, 1)
	_, err := io.ReadFull(c, b)
	c.SetDeadline(time.Time{})
	return err
}

// holdOpen measures this process's Go heap before and after opening n
// connections on p, each proven end to end by a 1-byte echo.
func holdOpen(ctx context.Context, p path, n int) (memory, error) {
	var m memory
	m.n = n
	settle()
	m.heapBefore, m.stackBefore, m.goroutinesBefore = memStats()
	conns, err := openEchoed(ctx, p, n)
	defer closeAll(conns)
	if err != nil {
		return m, err
	}
	settle()
	m.heapAfter, m.stackAfter, m.goAfter = memStats()
	return m, nil
}

// openEchoed opens n connections on p and leaves them open, each proven
// end to end by a 1-byte echo. On error it returns those it opened.
func openEchoed(ctx context.Context, p path, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	err := localmesh.InPod(p.client, func() error {
		for range n {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
			if err != nil {
				return fmt.Errorf("bench: %s: open connection %d of %d: %w", p.name, len(conns)+1, n, err)
			}
			conns = append(conns, c)
			if err := ping(c); err != nil {
				return fmt.Errorf("bench: %s: echo on connection %d of %d: %w", p.name, len(conns), n, err)
			}
		}
		return nil
	})
	return conns, err
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// settle lets connections just closed or opened finish their goroutines,
// and lets open ones idle past hbone's parkIdleAfter (100ms), after which a
// relay direction waiting for data gives its goroutine up.
func settle() { time.Sleep(2 * time.Second) }

func memStats() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine()
}
