package netbed

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/regomesh/regomesh/internal/testgo"
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
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			testgo.Go(t, func(ctx context.Context) {
				defer context.AfterFunc(ctx, func() { conn.Close() })()
				io.Copy(conn, conn)
				conn.Close()
			})
		}
	})
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

// TestNodeStart: a child started in a node's namespace is there (not in
// ours), and outlives the locked thread that asked for it, which Go
// retires when its goroutine ends (a child forked from that thread would
// get its parent-death signal then).
func TestNodeStart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netbed needs root; CI runs as root")
	}
	bed, err := New("rms", 212)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() })
	node, err := bed.AddNode("node-1")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := node.AddPod("a")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	if err := inPod(pod, func() error { return node.Start(cmd) }); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	if got, want := netnsOf(t, fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)), netnsOf(t, node.Path); got != want {
		t.Errorf("child in namespace %d, the node's is %d", got, want)
	}
	select {
	case err := <-exited:
		t.Fatalf("the child died with the thread that started it: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
}

func netnsOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
