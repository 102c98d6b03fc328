package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The benchmarks compare HBONE with two baselines measured in the same
// run: direct TCP on loopback (a memcpy: the ceiling) and a plain
// crypto/tls TLS 1.3 connection pair doing the same encryption work (the
// fair yardstick). The "ratios" sub-benchmarks report HBONE against both.
//
//	go test ./hbone -run '^$' -bench . -benchtime 2s

// benchPath is one way to reach an upstream TCP server: it returns the
// client's connection.
type benchPath func(b *testing.B, upstream netip.AddrPort) net.Conn

func directPath(b *testing.B, upstream netip.AddrPort) net.Conn {
	c, err := net.Dial("tcp", upstream.String())
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// tlsPath is a TLS 1.3 client and a TLS 1.3 server that relays to the
// upstream: the work of an HBONE pair without HTTP/2.
func tlsPath(b *testing.B, upstream netip.AddrPort) net.Conn {
	m := newMesh(b)
	relay := startTLSRelay(b, m, upstream)
	c, err := tls.Dial("tcp", relay.addr.String(), clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// tlsRelay is the server side of the tls13 baseline: it terminates
// mutual TLS 1.3 with the mesh's server SVID and the TLS configuration
// an HBONE Server uses, and relays each connection to the upstream.
type tlsRelay struct {
	addr     netip.AddrPort
	accepted atomic.Int64 // TCP connections accepted
}

func startTLSRelay(b *testing.B, m *mesh, upstream netip.AddrPort) *tlsRelay {
	l := listenLoopback(b, "127.0.0.1:0")
	b.Cleanup(func() { l.Close() })
	r := &tlsRelay{addr: l.Addr().(*net.TCPAddr).AddrPort()}
	srvCfg := serverTLS(m.serverSVID, m.bundle, nil)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			go func() {
				up, err := net.Dial("tcp", upstream.String())
				if err != nil {
					c.Close()
					return
				}
				Relay(context.Background(), tls.Server(c, srvCfg), up)
			}()
		}
	}()
	return r
}

func hbonePath(b *testing.B, upstream netip.AddrPort) net.Conn {
	m := newMesh(b)
	ts := startServer(b, m, &forward{})
	pool := newTestPool(b, m)
	s, err := pool.Dial(context.Background(), m.request(ts, upstream))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

var paths = []struct {
	name string
	path benchPath
}{
	{"direct", directPath},
	{"tls13", tlsPath},
	{"hbone", hbonePath},
}

// results keeps each sub-benchmark's last figure for the ratios.
var results sync.Map // name -> float64

// BenchmarkThroughput: one connection, client to upstream, 1 MiB writes.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 1 << 20
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			received := make(chan int64, 1)
			upstream := startTCP(b, func(c *net.TCPConn) {
				n, _ := io.Copy(io.Discard, c)
				received <- n
			})
			c := p.path(b, upstream)
			defer c.Close()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu := time.Now(), cpuTime()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			closeWrite(c)
			if n := <-received; n != int64(b.N)*chunk {
				b.Fatalf("upstream received %d bytes, want %d", n, int64(b.N)*chunk)
			}
			mb := float64(b.N) * chunk / 1e6
			b.ReportMetric(mb/(cpuTime()-cpu).Seconds(), "MB/cpu-s")
			results.Store("throughput/"+p.name, mb/time.Since(start).Seconds())
			results.Store("cpu/"+p.name, mb/(cpuTime()-cpu).Seconds())
		})
	}
	b.Run("ratios", func(b *testing.B) {
		reportRatios(b, "throughput", false)
	})
	b.Run("cpu-ratios", func(b *testing.B) {
		reportRatios(b, "cpu", false)
	})
}

// BenchmarkRoundTrip1KB: 1 KB request, 1 KB response through an echo
// upstream, one at a time; reports p50 and p99 latency in microseconds.
func BenchmarkRoundTrip1KB(b *testing.B) {
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			c := p.path(b, startEcho(b))
			defer c.Close()
			msg, reply := make([]byte, 1024), make([]byte, 1024)
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			p50, p99 := micros(lat[len(lat)/2]), micros(lat[len(lat)*99/100])
			b.ReportMetric(p50, "p50-µs")
			b.ReportMetric(p99, "p99-µs")
			results.Store("rtt/"+p.name, p50)
		})
	}
	b.Run("ratios", func(b *testing.B) {
		reportRatios(b, "rtt", true)
	})
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// reportRatios reports hbone over each baseline (for latency, also the
// microseconds HBONE adds over direct).
func reportRatios(b *testing.B, kind string, latency bool) {
	get := func(name string) float64 {
		v, ok := results.Load(kind + "/" + name)
		if !ok {
			b.Skipf("run the %s sub-benchmarks first", kind)
		}
		return v.(float64)
	}
	h, t, d := get("hbone"), get("tls13"), get("direct")
	b.ReportMetric(h/t, "hbone/tls13")
	b.ReportMetric(h/d, "hbone/direct")
	if latency {
		b.ReportMetric(h-d, "added-p50-µs")
	}
	for range b.N {
	}
}

// BenchmarkStreamOpen: tunnels opened and closed on one pooled
// connection, one at a time and from 32 goroutines; reports streams/s.
func BenchmarkStreamOpen(b *testing.B) {
	m := newMesh(b)
	ts := startServer(b, m, HandlerFunc(func(ctx context.Context, t *Tunnel) {
		if s, err := t.Accept(); err == nil {
			io.Copy(io.Discard, s)
		}
	}))
	pool := newTestPool(b, m)
	req := m.request(ts, netip.MustParseAddrPort("10.1.0.9:80"))
	open := func(b *testing.B) {
		s, err := pool.Dial(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	open(b) // warm the pool: one connection
	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		start, cpu := time.Now(), cpuTime()
		for range b.N {
			open(b)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
		b.ReportMetric(float64(b.N)/(cpuTime()-cpu).Seconds(), "streams/cpu-s")
	})
	b.Run("parallel32", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(max(1, 32/runtimeProcs()))
		start, cpu := time.Now(), cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				open(b)
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
		b.ReportMetric(float64(b.N)/(cpuTime()-cpu).Seconds(), "streams/cpu-s")
		if st := pool.Stats(); st.Conns != 1 {
			b.Errorf("streams spread over %d connections, want 1", st.Conns)
		}
	})
}

// BenchmarkConnOpen: each op opens a new connection, echoes one byte
// through it to an upstream and closes it; one at a time and from 32
// goroutines. For hbone that is a TCP connect, a mutual TLS 1.3
// handshake with both SVIDs, the HTTP/2 preface and SETTINGS and one
// CONNECT, from a fresh Pool; tls13 is the same TLS handshake (same
// SVIDs, same TLS configurations) without HTTP/2; direct is a TCP
// connect. Both ends run in this process, so conns/cpu-s counts the
// client's and the server's work. The "ratios" report hbone against both
// baselines.
//
//	go test ./hbone -run '^$' -bench ConnOpen -benchtime 2s
func BenchmarkConnOpen(b *testing.B) {
	modes := []struct {
		name string
		run  func(b *testing.B, op func() error)
	}{
		{"sequential", runSequential},
		{"parallel32", runParallel32},
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			for _, p := range connPaths {
				b.Run(p.name, func(b *testing.B) {
					benchConnOpen(b, mode.name+"/"+p.name, p.start, mode.run)
				})
			}
			b.Run("ratios", func(b *testing.B) {
				reportRatios(b, "conns/"+mode.name, false)
			})
			b.Run("cpu-ratios", func(b *testing.B) {
				reportRatios(b, "conns-cpu/"+mode.name, false)
			})
		})
	}
}

// benchConnOpen runs b.N ops of one path, reports the rates and keeps
// them under key for the ratios. Every op must have been a connection of
// its own: the path's server and the upstream must each have accepted
// exactly b.N.
func benchConnOpen(b *testing.B, key string, start func(*testing.B, netip.AddrPort) connPath, run func(*testing.B, func() error)) {
	upstream, served := startCountingEcho(b)
	p := start(b, upstream)
	b.ReportAllocs()
	b.ResetTimer()
	begin, cpu := time.Now(), cpuTime()
	run(b, p.open)
	wall, cpus := time.Since(begin).Seconds(), (cpuTime() - cpu).Seconds()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/wall, "conns/s")
	b.ReportMetric(float64(b.N)/cpus, "conns/cpu-s")
	results.Store("conns/"+key, float64(b.N)/wall)
	results.Store("conns-cpu/"+key, float64(b.N)/cpus)
	if n := p.accepted; n != nil && n.Load() != int64(b.N) {
		b.Errorf("the server accepted %d connections for %d ops, want one each", n.Load(), b.N)
	}
	if n := served.Load(); n != int64(b.N) {
		b.Errorf("the upstream served %d connections for %d ops, want one each", n, b.N)
	}
}

// connPath is one way of opening connections to an upstream, set up once.
type connPath struct {
	// open connects, echoes one byte through to the upstream and closes.
	open func() error
	// accepted counts the TCP connections the path's server accepted; nil
	// when the upstream is the server.
	accepted *atomic.Int64
}

var connPaths = []struct {
	name  string
	start func(b *testing.B, upstream netip.AddrPort) connPath
}{
	{"direct", directConns},
	{"tls13", tlsConns},
	{"hbone", hboneConns},
}

// directConns connect to the upstream itself: it is the path's server.
func directConns(b *testing.B, upstream netip.AddrPort) connPath {
	return connPath{open: func() error {
		c, err := net.Dial("tcp", upstream.String())
		if err != nil {
			return err
		}
		return echoByte(c)
	}}
}

// tlsConns handshake with a tlsRelay, as a Pool would with a Server.
func tlsConns(b *testing.B, upstream netip.AddrPort) connPath {
	m := newMesh(b)
	relay := startTLSRelay(b, m, upstream)
	return connPath{accepted: &relay.accepted, open: func() error {
		c, err := tls.Dial("tcp", relay.addr.String(), clientTLS(m.clientSVID, m.bundle, m.serverSVID.ID))
		if err != nil {
			return err
		}
		return echoByte(c)
	}}
}

// hboneConns open each tunnel from a Pool of its own, which has no
// connection to reuse and closes the one it opened.
func hboneConns(b *testing.B, upstream netip.AddrPort) connPath {
	m := newMesh(b)
	ts := startServer(b, m, &forward{})
	req := m.request(ts, upstream)
	return connPath{accepted: &ts.accepted, open: func() error {
		pool, err := NewPool(PoolConfig{Bundle: m.bundle})
		if err != nil {
			return err
		}
		defer pool.Close()
		s, err := pool.Dial(context.Background(), req)
		if err != nil {
			return err
		}
		return echoByte(s)
	}}
}

// echoByte sends one byte on c, reads it back and closes c.
func echoByte(c net.Conn) error {
	defer c.Close()
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	var buf [1]byte
	_, err := io.ReadFull(c, buf[:])
	return err
}

// startCountingEcho is startEcho counting the connections it served.
func startCountingEcho(b *testing.B) (netip.AddrPort, *atomic.Int64) {
	served := new(atomic.Int64)
	addr := startTCP(b, func(c *net.TCPConn) {
		served.Add(1)
		io.Copy(c, c)
		c.CloseWrite()
	})
	return addr, served
}

func runSequential(b *testing.B, op func() error) {
	for range b.N {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
}

// runParallel32 runs op from 32 goroutines (at least one per CPU).
func runParallel32(b *testing.B, op func() error) {
	b.SetParallelism(max(1, 32/runtimeProcs()))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// cpuTime is the CPU time (user and system) the process has used: on a
// shared machine it measures the work done, which wall-clock rates mix
// with other tenants' load.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkResumeParked: what parking costs a connection that idles. A
// relay between two sockets carries a 1 KiB round trip to an echo server
// after each 5 ms pause; "waiting" never parks (its goroutines wait in
// the netpoller through the pause), "parked" parks after 1 ms, so every
// round trip first resumes both directions. Reports p50/p99 of the round
// trips alone, and "resume" the p50 difference.
func BenchmarkResumeParked(b *testing.B) {
	for _, tc := range []struct {
		name string
		idle time.Duration
	}{{"waiting", time.Hour}, {"parked", time.Millisecond}} {
		b.Run(tc.name, func(b *testing.B) {
			old := parkIdleAfter.Swap(int64(tc.idle))
			defer parkIdleAfter.Store(old)
			app, relayClient := tcpPair(b)
			defer app.Close()
			up, err := net.Dial("tcp", startEcho(b).String())
			if err != nil {
				b.Fatal(err)
			}
			ended := make(chan struct{})
			StartRelay(context.Background(), relayClient, up, func(Counts, error) { close(ended) })
			msg, reply := make([]byte, 1024), make([]byte, 1024)
			lat := make([]time.Duration, 0, b.N)
			for range b.N {
				time.Sleep(5 * time.Millisecond)
				start := time.Now()
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(app, reply); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			app.Close()
			<-ended
			slices.Sort(lat)
			p50 := micros(lat[len(lat)/2])
			b.ReportMetric(p50, "p50-µs")
			b.ReportMetric(micros(lat[len(lat)*99/100]), "p99-µs")
			results.Store("resume/"+tc.name, p50)
		})
	}
	b.Run("resume", func(b *testing.B) {
		w, okw := results.Load("resume/waiting")
		p, okp := results.Load("resume/parked")
		if !okw || !okp {
			b.Skip("run the waiting and parked sub-benchmarks first")
		}
		b.ReportMetric(p.(float64)-w.(float64), "added-p50-µs")
		for range b.N {
		}
	})
}
