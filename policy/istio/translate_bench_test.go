package istio_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/regomesh/regomesh/policy/istio"
)

// BenchmarkTranslateBundle is `regomesh policy translate -o bundle --out
// FILE.tar.gz` on issue #15's 10,000 AuthorizationPolicies (one DENY each,
// two principals, a notNamespace, two ports, a CIDR; denyYAML, one file),
// whose goal is 0.5 s:
//
//	go test -run '^$' -bench 'TranslateBundle' -benchtime 3x -count 5 ./policy/istio
//
// in-process is the command's work (DecodeFiles, TranslateAll,
// WriteBundleTarGz) on every processor, one-core the same on one, which
// is its CPU time; cli runs the regomesh binary, built first, and reports
// its peak RSS too.
func BenchmarkTranslateBundle(b *testing.B) {
	const n = 10000
	dir := b.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(file, denyYAML(n), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Run("policies=10000/in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			translateBundle(b, file, n)
		}
	})
	b.Run("policies=10000/in-process/one-core", func(b *testing.B) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		for b.Loop() {
			translateBundle(b, file, n)
		}
	})
	bin := filepath.Join(dir, "regomesh")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/regomesh").CombinedOutput(); err != nil {
		b.Fatalf("build regomesh: %v\n%s", err, out)
	}
	b.Run("policies=10000/cli", func(b *testing.B) {
		peak := int64(0)
		for b.Loop() {
			cmd := exec.Command(bin, "policy", "translate", "-o", "bundle", "--out", filepath.Join(dir, "bundle.tar.gz"), file)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %v\n%s", cmd, err, out)
			}
			peak = max(peak, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)
		}
		b.ReportMetric(float64(peak)/1024, "peak-rss-MB")
	})
}

// translateBundle does what the CLI does with file: decode, translate and
// archive n policies.
func translateBundle(b *testing.B, file string, n int) {
	res, _, err := istio.DecodeFiles([]string{file})
	if err != nil || len(res.AuthorizationPolicies) != n {
		b.Fatal(err, len(res.AuthorizationPolicies))
	}
	tr, err := istio.TranslateAll(res, istio.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := tr.WriteBundleTarGz(io.Discard); err != nil {
		b.Fatal(err)
	}
}
