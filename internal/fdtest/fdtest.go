// Package fdtest makes a test process run out of file descriptors for
// real, so tests can show that a listener outlives EMFILE.
package fdtest

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// Exhaust lowers the soft descriptor limit to the highest
// descriptor the process holds and fills the free numbers below it, so the
// next open fails with EMFILE; it returns what frees them and raises the
// limit back (also run at cleanup).
func Exhaust(t testing.TB) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// The highest descriptor open bounds the limit from below: the kernel
	// refuses numbers at or above the limit, not counts.
	low := old
	low.Cur = uint64(highestFD(entries) + 1)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fillers []int
	for {
		fd, err := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		fillers = append(fillers, fd)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		for _, fd := range fillers {
			syscall.Close(fd)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(restore)
	return restore
}

func highestFD(entries []os.DirEntry) int {
	high := 0
	for _, e := range entries {
		var fd int
		for _, c := range e.Name() {
			fd = fd*10 + int(c-'0')
		}
		high = max(high, fd)
	}
	return high
}
