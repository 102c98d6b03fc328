package istio_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
)

// Loading translated policies (issue #15), each beside what stock OPA
// does with the same bundle in the same run, so the ratio is visible:
//
//	go test -run '^$' -bench 'Load|ReloadOne|TranslateDenies' -benchtime 3x -count 5 ./policy/istio
//
// opa-check is `opa check --bundle DIR` through OPA's Go packages: read
// the bundle with OPA's loader and compile its modules with one
// ast.Compiler, nothing else. The whole-process figures (wall, peak RSS)
// come from farm-bench on the binaries; the README has the commands.

// denyPolicies are issue #15's n AuthorizationPolicies: one DENY each,
// selecting one workload, with two principals, a notNamespace, a CIDR
// and two ports.
func denyPolicies(n int) []*istio.Policy {
	out := make([]*istio.Policy, n)
	for i := range out {
		out[i] = denyPolicy(i, 8000+i%50)
	}
	return out
}

// denyPolicy is policy i of denyPolicies, its first port given.
func denyPolicy(i, port int) *istio.Policy {
	src := fmt.Sprintf("src-%d", i%50)
	return &istio.Policy{
		Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("p-%d", i), Action: istio.Deny,
		Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
		Rules: []istio.Rule{{
			From: []istio.Source{{
				Principals:    []string{fmt.Sprintf("cluster.local/ns/%s/sa/sa-%d", src, i%7), fmt.Sprintf("cluster.local/ns/%s/sa/batch", src)},
				NotNamespaces: []string{fmt.Sprintf("trusted-%d", i%10)},
				IPBlocks:      []string{fmt.Sprintf("10.%d.0.0/16", i%250)},
			}},
			To: []istio.Operation{{Ports: []string{fmt.Sprint(port), "9443"}}},
		}},
	}
}

// denyBundleDir translates policies and writes them as a bundle
// directory.
func denyBundleDir(b *testing.B, policies []*istio.Policy) string {
	b.Helper()
	tr, err := istio.Translate(policies, istio.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "bundle")
	if err := tr.WriteBundleDir(dir); err != nil {
		b.Fatal(err)
	}
	return dir
}

func BenchmarkLoad(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		dir := denyBundleDir(b, denyPolicies(n))
		b.Run(fmt.Sprintf("policies=%d/regomesh", n), func(b *testing.B) {
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				policy.DropReadCache() // a first read, as opa check's
				readAndLoad(b, newQuietEngine(b), dir)
			}
			cpu.report()
		})
		b.Run(fmt.Sprintf("policies=%d/opa-check", n), func(b *testing.B) {
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				opaCheck(b, dir)
			}
			cpu.report()
		})
		// The same bundle as a .tar.gz, unsigned and signed (HS256): what
		// verifying every file's digest adds to a load.
		unsigned, signed, verification := tarBundles(b, dir)
		for _, tar := range []struct {
			name string
			path string
			v    *policy.Verification
		}{{"regomesh-tar", unsigned, nil}, {"regomesh-signed-tar", signed, verification}} {
			b.Run(fmt.Sprintf("policies=%d/%s", n, tar.name), func(b *testing.B) {
				b.ReportAllocs()
				cpu := cpuTime(b)
				for b.Loop() {
					policy.DropReadCache()
					bundle, err := policy.ReadBundle(tar.path, tar.v)
					if err != nil {
						b.Fatal(err)
					}
					load(b, newQuietEngine(b), bundle)
				}
				cpu.report()
			})
		}
	}
}

// tarBundles writes the bundle directory dir as a .tar.gz, and again
// signed with an HS256 secret, as `opa build --signing-key` signs, and
// returns both and the verification that accepts the signed one.
func tarBundles(b *testing.B, dir string) (unsigned, signed string, v *policy.Verification) {
	b.Helper()
	const secret = "benchmark secret"
	read, err := bundle.NewCustomReader(bundle.NewDirectoryLoader(dir)).WithSkipBundleVerification(true).Read()
	if err != nil {
		b.Fatal(err)
	}
	write := func(name string, bu bundle.Bundle) string {
		var buf bytes.Buffer
		if err := bundle.NewWriter(&buf).Write(bu); err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(b.TempDir(), name)
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
		return path
	}
	unsigned = write("unsigned.tar.gz", read)
	if err := read.GenerateSignature(bundle.NewSigningConfig(secret, "HS256", ""), "bench", false); err != nil {
		b.Fatal(err)
	}
	signed = write("signed.tar.gz", read)
	return unsigned, signed, &policy.Verification{Keys: map[string]policy.VerificationKey{"bench": {Algorithm: "HS256", Key: secret}}}
}

// processCPU is the process's CPU time (user and system, every thread,
// the collector's included) since a benchmark started, reported per
// iteration as cpu-s/op: on a shared, loaded machine it moves less than
// the wall time, which counts the waits for a processor.
type processCPU struct {
	b     *testing.B
	start time.Duration
}

func cpuTime(b *testing.B) processCPU { return processCPU{b: b, start: rusageCPU(b)} }

func (c processCPU) report() {
	c.b.ReportMetric((rusageCPU(c.b)-c.start).Seconds()/float64(c.b.N), "cpu-s/op")
}

func rusageCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReloadOne changes one policy of 10,000 in a loaded engine:
// each iteration loads the set with policy 4321's port changed, or back,
// from the same bundle directory, as a proxy rereads its --bundle. load is
// the engine's part, the bundle already read; read+load adds reading the
// bundle (the two changed files written in place first); download+load
// reads it as OPA's downloader does instead. opa-check
// compiles the changed bundle from scratch, as OPA does on every bundle
// update.
func BenchmarkReloadOne(b *testing.B) {
	const n, changed = 10000, 4321
	policies := denyPolicies(n)
	dir := denyBundleDir(b, policies)
	policies[changed] = denyPolicy(changed, 7777)
	module := istio.ModuleFile(policies[changed])
	var versions [2]map[string][]byte // the changed files of each version
	for i, d := range []string{dir, denyBundleDir(b, policies)} {
		versions[i] = map[string][]byte{}
		for _, name := range []string{".manifest", module} {
			src, err := os.ReadFile(filepath.Join(d, name))
			if err != nil {
				b.Fatal(err)
			}
			versions[i][name] = src
		}
	}
	// write puts a version's files in place. The module ends with a
	// comment naming the change, so every change is new to the reader
	// (which remembers the modules it read) as it is to a proxy.
	change := 0
	write := func(version int) {
		change++
		for name, src := range versions[version] {
			if name == module {
				src = fmt.Appendf(slices.Clone(src), "\n# change %d\n", change)
			}
			if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	var read [2]*policy.Bundle
	var tars [2][]byte // each version as a .tar.gz, as a bundle server serves it
	for i := range read {
		write(i)
		var err error
		if read[i], err = policy.ReadBundle(dir, nil); err != nil {
			b.Fatal(err)
		}
		unsigned, _, _ := tarBundles(b, dir)
		if tars[i], err = os.ReadFile(unsigned); err != nil {
			b.Fatal(err)
		}
	}
	e := newQuietEngine(b)
	load(b, e, read[0])
	b.Run("load", func(b *testing.B) {
		cpu := cpuTime(b)
		i := 0
		for b.Loop() {
			i++
			load(b, e, read[i%2])
		}
		cpu.report()
	})
	b.Run("read+load", func(b *testing.B) {
		cpu := cpuTime(b)
		i := 0
		for b.Loop() {
			i++
			write(i % 2)
			readAndLoad(b, e, dir)
		}
		cpu.report()
	})
	// download+load: what a proxy does with a bundle OPA's downloader
	// fetched (policy/opabundles): OPA's reader reads the tarball as
	// v1/download reads it, parsing every module, and the engine loads it.
	b.Run("download+load", func(b *testing.B) {
		downloaded := func(tar []byte) *policy.Bundle {
			raw, err := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(tar), "https://bundles.test/bundles/mesh")).
				WithRegoVersion(ast.RegoV1).WithProcessAnnotations(true).WithBundleName("mesh").Read()
			if err != nil {
				b.Fatal(err)
			}
			bu, err := policy.NewBundle("mesh", &raw)
			if err != nil {
				b.Fatal(err)
			}
			return bu
		}
		// The engine holds the downloaded set (named as the downloader
		// names it) before the first change, as a proxy does.
		load(b, e, downloaded(tars[0]))
		cpu := cpuTime(b)
		i := 0
		for b.Loop() {
			i++
			load(b, e, downloaded(tars[i%2]))
		}
		cpu.report()
	})
	b.Run("opa-check", func(b *testing.B) {
		cpu := cpuTime(b)
		i := 0
		for b.Loop() {
			i++
			write(i % 2)
			opaCheck(b, dir)
		}
		cpu.report()
	})
}

// BenchmarkHeld is what an engine holding n translated policies keeps, as
// a proxy holds them between loads: the Go heap in use after a collection,
// and the process's resident set after the heap returned what it could to
// the system (VmRSS), each beside the same process holding an engine with
// no policy (n=0). The bundle is read and dropped, as BundleFiles.Load
// drops it.
func BenchmarkHeld(b *testing.B) {
	for _, n := range []int{0, 10000} {
		dir := ""
		if n > 0 {
			dir = denyBundleDir(b, denyPolicies(n))
		}
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			var heap, rss float64
			for b.Loop() {
				e := newQuietEngine(b)
				if dir != "" {
					readAndLoad(b, e, dir)
				}
				h, r := settledMemory(b)
				heap, rss = heap+h, rss+r
				runtime.KeepAlive(e)
			}
			b.ReportMetric(heap/float64(b.N), "heap-MB")
			b.ReportMetric(rss/float64(b.N), "rss-MB")
		})
	}
}

// settledMemory collects garbage, returns freed memory to the system and
// reads the heap in use and VmRSS, in MB.
func settledMemory(b *testing.B) (heap, rss float64) {
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if kb, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			rss = v / 1024
		}
	}
	return float64(m.HeapInuse) / (1 << 20), rss
}

// BenchmarkTranslateDenies is `regomesh policy translate -o bundle` on
// issue #15's policies, in process: decode their YAML, translate, write
// the bundle directory.
func BenchmarkTranslateDenies(b *testing.B) {
	const n = 10000
	src := denyYAML(n)
	b.Run(fmt.Sprintf("policies=%d/decode+translate+write", n), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res, _, err := istio.DecodeAll(bytes.NewReader(src), "policies.yaml")
			if err != nil || len(res.AuthorizationPolicies) != n {
				b.Fatal(err, len(res.AuthorizationPolicies))
			}
			tr, err := istio.TranslateAll(res, istio.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := tr.WriteBundleDir(filepath.Join(b.TempDir(), "bundle")); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// denyYAML is denyPolicies(n) as Kubernetes YAML, one document each.
func denyYAML(n int) []byte {
	var buf bytes.Buffer
	for i, p := range denyPolicies(n) {
		r := p.Rules[0]
		fmt.Fprintf(&buf, `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:
  selector: {matchLabels: {app: app-%d}}
  action: DENY
  rules:
  - from:
    - source: {principals: [%q, %q], notNamespaces: [%q], ipBlocks: [%q]}
    to:
    - operation: {ports: [%q, %q]}
`, p.Name, p.Namespace, i, r.From[0].Principals[0], r.From[0].Principals[1], r.From[0].NotNamespaces[0],
			r.From[0].IPBlocks[0], r.To[0].Ports[0], r.To[0].Ports[1])
	}
	return buf.Bytes()
}

func newQuietEngine(b *testing.B) *policy.Engine {
	b.Helper()
	e, err := policy.NewEngine(policy.Config{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

func readAndLoad(b *testing.B, e *policy.Engine, dir string) {
	b.Helper()
	bundle, err := policy.ReadBundle(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	load(b, e, bundle)
}

func load(b *testing.B, e *policy.Engine, bundle *policy.Bundle) {
	b.Helper()
	if err := e.Load(context.Background(), bundle); err != nil {
		b.Fatal(err)
	}
}

// opaCheck does what `opa check --bundle dir` does (OPA's cmd/check.go):
// load the bundle with OPA's file loader, compile its modules.
func opaCheck(b *testing.B, dir string) {
	b.Helper()
	caps := ast.CapabilitiesForThisVersion()
	l := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).WithProcessAnnotation(true).
		WithBundleLazyLoadingMode(bundle.HasExtension()).WithCapabilities(caps)
	bu, err := l.WithSkipBundleVerification(true).AsBundle(dir)
	if err != nil {
		b.Fatal(err)
	}
	c := ast.NewCompiler().WithCapabilities(caps).WithEnablePrintStatements(true).WithUseTypeCheckAnnotations(true)
	if c.Compile(bu.ParsedModules("")); c.Failed() {
		b.Fatal(c.Errors)
	}
}
