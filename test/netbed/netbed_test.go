package netbed

import (
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// listenIn opens a listener inside the pod's namespace.
func listenIn(t *testing.T, p *Pod, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := inPod(p, func() (err error) { l, err = net.Listen("tcp", addr); return err })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func inPod(p *Pod, fn func() error) error {
	h, err := netns.GetFromPath(p.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	return inThread(h, fn)
}

func TestPodsReachEachOtherAcrossNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netbed needs root; CI runs as root")
	}
	bed, err := New("rmt", 211)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() })
	n1, err := bed.AddNode("node-1")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := bed.AddNode("node-2")
	if err != nil {
		t.Fatal(err)
	}
	a, err := n1.AddPod("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n2.AddPod("b")
	if err != nil {
		t.Fatal(err)
	}
	c, err := n1.AddPod("c")
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.String() != "10.211.1.2" || b.IP.String() != "10.211.2.2" || c.IP.String() != "10.211.1.3" {
		t.Errorf("addresses a=%s b=%s c=%s", a.IP, b.IP, c.IP)
	}
	l := listenIn(t, b, ":9000")
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	for _, from := range []*Pod{a, c} {
		var got string
		err := inPod(from, func() error {
			conn, err := net.DialTimeout("tcp", b.IP.String()+":9000", 3*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.Write([]byte("ping"))
			buf := make([]byte, 4)
			_, err = io.ReadFull(conn, buf)
			got = string(buf)
			return err
		})
		if err != nil || got != "ping" {
			t.Errorf("%s -> %s: %q, %v", from.Name, b.Name, got, err)
		}
	}
	names := bed.names
	if err := bed.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.Stat("/var/run/netns/" + n); !os.IsNotExist(err) {
			t.Errorf("namespace %s survived Close", n)
		}
	}
}
