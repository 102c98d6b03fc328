// Package testports hands tests loopback TCP addresses for processes that
// must be told where to listen before they bind: a binary's --admin-addr,
// an OPA server's --addr.
//
// The usual trick, listening on port 0 and closing, leaves the port free
// only for a moment. The kernel picks from the same ephemeral range for
// every bind to port 0 and every outgoing connection on the machine, so
// under a busy suite something else takes the port before the child binds
// it, and the test fails with "address already in use".
//
// Addr picks instead from below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range), where the kernel never picks
// on its own, and reserves each port for the rest of the test with an
// exclusive flock on a file named after it, under os.TempDir(). Every test
// binary on the machine honours the same locks, and the kernel drops a
// lock when the process holding it dies, so a killed run leaves nothing
// reserved. A port that another program has bound is skipped. Linux only
// (it reads the ephemeral range from /proc), as the tests that use it are.
package testports

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// lockDir holds one lock file per port ever reserved; the files stay, the
// locks do not.
var lockDir = filepath.Join(os.TempDir(), "regomesh-testports")

// Addr returns "127.0.0.1:PORT" with a port nothing else on the machine
// listens on or has reserved through this package, reserved until t and
// its cleanups end. It fails t when none is left.
func Addr(t testing.TB) string {
	t.Helper()
	port, release, err := reserve()
	if err != nil {
		t.Fatalf("testports: %v", err)
	}
	t.Cleanup(release)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// reserve locks and returns a free port below the ephemeral range, trying
// each of them once from a random start.
func reserve() (port int, release func(), err error) {
	lo, hi, err := portRange()
	if err != nil {
		return 0, nil, err
	}
	if err := os.MkdirAll(lockDir, 0o777); err != nil {
		return 0, nil, err
	}
	// Every user's tests share the directory, as they share the ports:
	// sticky, like /tmp, whatever the umask made it. Best effort: it may
	// be another user's.
	_ = os.Chmod(lockDir, os.ModeSticky|0o777)
	n := hi - lo + 1
	start := rand.IntN(n)
	for i := range n {
		port := lo + (start+i)%n
		if release, ok := tryPort(port); ok {
			return port, release, nil
		}
	}
	return 0, nil, fmt.Errorf("no free port in %d-%d", lo, hi)
}

// tryPort takes port's lock without waiting and checks that the port can
// be bound. It returns the release of the lock when both hold.
func tryPort(port int) (release func(), ok bool) {
	// Read-only, so that a lock file another user made serves too.
	f, err := os.OpenFile(filepath.Join(lockDir, strconv.Itoa(port)), os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return nil, false
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		f.Close() // closing releases the lock
		return nil, false
	}
	l.Close()
	return func() { f.Close() }, true
}

// portRange is the half of the ports below the kernel's ephemeral range
// nearest to it: unprivileged, and clear of the well-known low ports that
// services on a development machine use.
func portRange() (lo, hi int, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, 0, fmt.Errorf("ip_local_port_range is %q", b)
	}
	ephemeralLow, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0, 0, fmt.Errorf("ip_local_port_range is %q", b)
	}
	hi = ephemeralLow - 1
	lo = max(ephemeralLow/2, 1024)
	if hi < lo {
		return 0, 0, fmt.Errorf("the ephemeral range starts at %d: no unprivileged ports below it", ephemeralLow)
	}
	return lo, hi, nil
}
