package capture

import (
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// These paths name the two network namespaces a pod's never is: the
// node's (the one PID 1 lives in, when ztunnel shares the node's PID
// namespace) and ztunnel's own. Ztunnel's own is read through the calling
// thread, not /proc/self (the main thread's): Netns.Do switches whichever
// thread runs it, the main thread included, and only while that thread is
// locked to it, so a goroutine that has not locked its thread always runs
// in ztunnel's own namespace.
const (
	HostNetnsPath = "/proc/1/ns/net"
	SelfNetnsPath = "/proc/thread-self/ns/net"
)

// NetnsID identifies a network namespace whatever path names it (a bind
// mount under /var/run/netns and /proc/<pid>/ns/net name one namespace).
type NetnsID struct{ Dev, Ino uint64 }

// IdentifyNetns returns the identity of the namespace at path.
func IdentifyNetns(path string) (NetnsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return NetnsID{}, fmt.Errorf("capture: stat netns %s: %w", path, err)
	}
	return NetnsID{Dev: st.Dev, Ino: st.Ino}, nil
}

// ID is the namespace's identity.
func (n *Netns) ID() (NetnsID, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(n.Fd(), &st); err != nil {
		return NetnsID{}, fmt.Errorf("capture: stat netns %s: %w", n.path, err)
	}
	return NetnsID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Addrs lists the addresses assigned to the namespace's interfaces.
func (n *Netns) Addrs() ([]netip.Addr, error) {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return nil, fmt.Errorf("capture: netlink in %s: %w", n.path, err)
	}
	defer h.Close()
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("capture: addresses in %s: %w", n.path, err)
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
