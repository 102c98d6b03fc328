package testports

import (
	"net"
	"strconv"
	"testing"
)

// Each address is below the ephemeral range, bindable, and distinct from
// the others handed out, and a port stays reserved until its test ends.
func TestAddrReservesDistinctPorts(t *testing.T) {
	lo, hi, err := portRange()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 50 {
		addr := Addr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if port < lo || port > hi {
			t.Errorf("port %d outside %d-%d", port, lo, hi)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s not bindable: %v", addr, err)
		}
		l.Close()
		if _, ok := tryPort(port); ok {
			t.Errorf("port %d could be reserved again while its test runs", port)
		}
	}
}

// A port another program listens on is never handed out.
func TestAddrSkipsBoundPorts(t *testing.T) {
	lo, hi, err := portRange()
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	// Bind a run of ports, then check that tryPort refuses each.
	for p := lo; p <= hi && len(held) < 20; p++ {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		held = append(held, l)
		if release, ok := tryPort(p); ok {
			release()
			t.Errorf("port %d reserved while another listener holds it", p)
		}
	}
	if len(held) == 0 {
		t.Fatal("no port below the ephemeral range could be bound")
	}
}

// The reservation ends with the test that made it.
func TestReleaseAtCleanup(t *testing.T) {
	var addr string
	t.Run("holder", func(t *testing.T) { addr = Addr(t) })
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	release, ok := tryPort(port)
	if !ok {
		t.Fatalf("port %d still reserved after its test ended", port)
	}
	release()
}
