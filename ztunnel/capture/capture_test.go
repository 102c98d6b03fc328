package capture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNetns creates a named network namespace for the test and deletes it
// at cleanup.
func testNetns(t *testing.T, name string) *Netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("capture tests need root (network namespaces and nftables); CI runs them as root")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name) // switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		panic("cannot return to the original netns: " + serr.Error())
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	ns, err := OpenNetns("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// pair links two namespaces with a veth and addresses each end, lo up.
func pair(t *testing.T, a, b *Netns, aAddrs, bAddrs []string) {
	t.Helper()
	ha, err := netlink.NewHandleAt(netns.NsHandle(a.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(netns.NsHandle(b.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	peer, err := ha.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ha.LinkSetNsFd(peer, b.Fd()); err != nil {
		t.Fatal(err)
	}
	up(t, ha, "eth0", aAddrs...)
	up(t, hb, "peer0", bAddrs...)
}

func up(t *testing.T, h *netlink.Handle, name string, cidrs ...string) {
	t.Helper()
	for _, n := range []string{"lo", name} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := h.LinkByName(name)
	for _, cidr := range cidrs {
		addr, _ := netlink.ParseAddr(cidr)
		addr.Flags = unix.IFA_F_NODAD // usable at once
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
	}
}

func listen(t *testing.T, ns *Netns, addr string) net.Listener {
	t.Helper()
	l, err := ns.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// How long accepted waits: for a connection a test expects, long enough
// for a busy machine (it returns as soon as one arrives); for one that
// must not arrive, briefly (the dial has completed by then, so a stray
// connection is already queued).
const (
	expected   = 10 * time.Second
	unexpected = 300 * time.Millisecond
)

// accepted returns the next connection l accepts, or nil after within.
func accepted(l net.Listener, within time.Duration) net.Conn {
	type res struct{ c net.Conn }
	ch := make(chan res, 1)
	go func() { c, _ := l.Accept(); ch <- res{c} }() // waited for below, in both cases
	select {
	case r := <-ch:
		return r.c
	case <-time.After(within):
		l.(*net.TCPListener).SetDeadline(time.Now()) // unblock Accept
		<-ch
		l.(*net.TCPListener).SetDeadline(time.Time{})
		return nil
	}
}

func dialFrom(t *testing.T, ns *Netns, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Path(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCapture(t *testing.T) {
	id := rand.IntN(1 << 20)
	pod := testNetns(t, fmt.Sprintf("rm-cap-pod-%d", id))
	peer := testNetns(t, fmt.Sprintf("rm-cap-peer-%d", id))
	pair(t, pod, peer, []string{"10.213.0.1/24", "fd00:213::1/64"}, []string{"10.213.0.2/24", "fd00:213::2/64"})
	if err := Install(pod); err != nil {
		t.Fatal(err)
	}
	if err := Install(pod); err != nil { // idempotent: replaces
		t.Fatalf("second install: %v", err)
	}
	outbound := listen(t, pod, fmt.Sprintf(":%d", OutboundPort))
	plaintext := listen(t, pod, fmt.Sprintf(":%d", PlaintextPort))
	hbone := listen(t, pod, fmt.Sprintf(":%d", HBONEPort))
	podLoopback := listen(t, pod, "127.0.0.1:9090")
	remote := listen(t, peer, ":7070")

	t.Run("pod outbound goes to 15001 with its original destination", func(t *testing.T) {
		dialFrom(t, pod, "10.213.0.2:7070")
		c := accepted(outbound, expected)
		if c == nil {
			t.Fatal("not captured on 15001")
		}
		defer c.Close()
		if dst, err := OriginalDestination(c); err != nil || dst != netip.MustParseAddrPort("10.213.0.2:7070") {
			t.Errorf("original destination = %v, %v", dst, err)
		}
		if c := accepted(remote, unexpected); c != nil {
			c.Close()
			t.Error("the captured connection also reached the destination")
		}
	})
	t.Run("IPv6 outbound keeps its original destination", func(t *testing.T) {
		dialFrom(t, pod, "[fd00:213::2]:7070")
		c := accepted(outbound, expected)
		if c == nil {
			t.Fatal("not captured on 15001")
		}
		defer c.Close()
		if dst, err := OriginalDestination(c); err != nil || dst != netip.MustParseAddrPort("[fd00:213::2]:7070") {
			t.Errorf("original destination = %v, %v", dst, err)
		}
	})
	t.Run("ztunnel's marked sockets are not captured", func(t *testing.T) {
		c, err := pod.Dial(context.Background(), "10.213.0.2:7070")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if r := accepted(remote, expected); r == nil {
			t.Error("a marked connection did not reach its destination")
		} else {
			r.Close()
		}
	})
	t.Run("loopback stays in the pod", func(t *testing.T) {
		dialFrom(t, pod, "127.0.0.1:9090")
		if c := accepted(podLoopback, expected); c == nil {
			t.Error("loopback traffic was captured")
		} else {
			c.Close()
		}
	})
	t.Run("inbound plaintext goes to 15006", func(t *testing.T) {
		dialFrom(t, peer, "10.213.0.1:8080")
		c := accepted(plaintext, expected)
		if c == nil {
			t.Fatal("not captured on 15006")
		}
		defer c.Close()
		if dst, err := OriginalDestination(c); err != nil || dst != netip.MustParseAddrPort("10.213.0.1:8080") {
			t.Errorf("original destination = %v, %v", dst, err)
		}
	})
	t.Run("inbound HBONE reaches 15008", func(t *testing.T) {
		dialFrom(t, peer, "10.213.0.1:15008")
		if c := accepted(hbone, expected); c == nil {
			t.Error("HBONE did not reach 15008")
		} else {
			c.Close()
		}
	})
	t.Run("remove restores direct traffic", func(t *testing.T) {
		if err := Remove(pod); err != nil {
			t.Fatal(err)
		}
		if ok, err := Installed(pod); err != nil || ok {
			t.Fatalf("installed = %v, %v after Remove", ok, err)
		}
		if err := Remove(pod); err != nil {
			t.Errorf("removing again: %v", err)
		}
		dialFrom(t, pod, "10.213.0.2:7070")
		if c := accepted(remote, expected); c == nil {
			t.Error("after Remove the pod still cannot reach its destination directly")
		} else {
			c.Close()
		}
	})
}
