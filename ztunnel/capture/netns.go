package capture

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// Netns is an open network namespace (a pod's).
type Netns struct {
	handle netns.NsHandle
	path   string
}

// OpenNetns opens the namespace at path (for example /var/run/netns/pod-a
// or /proc/<pid>/ns/net).
func OpenNetns(path string) (*Netns, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("capture: open netns %s: %w", path, err)
	}
	return &Netns{handle: h, path: path}, nil
}

// Path is where the namespace was opened from.
func (n *Netns) Path() string { return n.path }

// Fd is the namespace's file descriptor.
func (n *Netns) Fd() int { return int(n.handle) }

// Close releases the namespace handle; sockets made in it stay valid.
func (n *Netns) Close() error { return n.handle.Close() }

// Do runs fn on an OS thread switched into the namespace. Sockets fn makes
// belong to the namespace for their whole life, whichever thread uses them
// later. If the thread cannot switch back, it stays locked and dies with
// the goroutine, so no other goroutine ever runs in the wrong namespace.
func (n *Netns) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("capture: current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("capture: enter netns %s: %w", n.path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("capture: leave netns %s: %w (thread retired)", n.path, err)
			return // still locked: the runtime ends this thread with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a TCP listener inside the namespace.
func (n *Netns) Listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture: listen %s in %s: %w", addr, n.path, err)
	}
	return l, nil
}

// Dial connects from inside the namespace with ztunnel's mark, so the
// pod's capture rules let the connection through.
func (n *Netns) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = MarkedDialer().DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// MarkedDialer dials with SO_MARK = Mark.
func MarkedDialer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, Mark)
		})
		if err != nil {
			return err
		}
		return serr
	}}
}
