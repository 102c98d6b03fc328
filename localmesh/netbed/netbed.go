// Package netbed builds, on one machine, the network a mesh runs on:
// "nodes" and "pods" as network namespaces. Nodes share a fabric (a bridge
// in its own namespace); each node has a bridge its pods attach to, routes
// to the other nodes' pod subnets, and forwarding on. Only loopback and the
// namespaces it creates are touched, and Close removes everything (tests
// also register it with t.Cleanup, so a failing test leaves nothing).
//
// Addresses: node n (1-based) is 10.<net>.0.n on the fabric and 10.<net>.n.1
// towards its pods; pod m of node n is 10.<net>.n.(m+1).
package netbed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Bed is one test network.
type Bed struct {
	prefix string // namespace name prefix, unique per bed
	net    int    // second octet of every address
	fabric netns.NsHandle
	nodes  []*Node
	mu     sync.Mutex
	names  []string // every namespace created, for Close
}

// Node is a namespace standing for a Kubernetes node.
type Node struct {
	Index  int
	Name   string
	NS     string     // netns name
	Path   string     // /var/run/netns/<NS>
	IP     netip.Addr // fabric address
	bed    *Bed
	handle netns.NsHandle
	pods   int
}

// Pod is a namespace standing for a pod.
type Pod struct {
	Name string
	NS   string // netns name
	Path string // /var/run/netns/<NS>
	IP   netip.Addr
	Node *Node
}

// New creates the fabric; prefix names the namespaces (keep it short and
// unique per concurrent bed, e.g. "rmb1"), net picks 10.<net>.0.0/16.
func New(prefix string, net int) (*Bed, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netbed: network namespaces need root")
	}
	b := &Bed{prefix: prefix, net: net}
	fabric, err := b.newNetns("fabric")
	if err != nil {
		return nil, err
	}
	b.fabric = fabric
	err = b.in(fabric, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		return addBridge(h, "br0", netip.Prefix{})
	})
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// AddNode creates a node attached to the fabric.
func (b *Bed) AddNode(name string) (*Node, error) {
	idx := len(b.nodes) + 1
	h, err := b.newNetns("n" + fmt.Sprint(idx))
	if err != nil {
		return nil, err
	}
	n := &Node{Index: idx, Name: name, NS: b.nsName("n" + fmt.Sprint(idx)), IP: b.addr(0, idx), bed: b, handle: h}
	n.Path = "/var/run/netns/" + n.NS
	if err := b.attachNode(n); err != nil {
		return nil, fmt.Errorf("netbed: node %s: %w", name, err)
	}
	for _, other := range b.nodes {
		if err := routeBetween(n, other); err != nil {
			return nil, err
		}
	}
	b.nodes = append(b.nodes, n)
	return n, nil
}

func (b *Bed) attachNode(n *Node) error {
	fabricSide := fmt.Sprintf("f%d", n.Index)
	err := b.in(b.fabric, func(h *netlink.Handle) error {
		return vethTo(h, fabricSide, "fabric0", n.handle, "br0")
	})
	if err != nil {
		return err
	}
	return b.in(n.handle, func(h *netlink.Handle) error {
		for _, step := range []func() error{
			func() error { return linkUp(h, "lo") },
			func() error { return addrUp(h, "fabric0", netip.PrefixFrom(n.IP, 24)) },
			func() error { return addBridge(h, "pods", netip.PrefixFrom(b.addr(n.Index, 1), 24)) },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		return nil
	}, sysctl("net/ipv4/ip_forward", "1"))
}

// routeBetween makes each node route the other's pod subnet via its fabric IP.
func routeBetween(a, b *Node) error {
	for _, p := range [][2]*Node{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		dst := netip.PrefixFrom(from.bed.addr(to.Index, 0), 24)
		err := from.bed.in(from.handle, func(h *netlink.Handle) error {
			return h.RouteAdd(&netlink.Route{Dst: ipNet(dst), Gw: to.IP.AsSlice()})
		})
		if err != nil {
			return fmt.Errorf("netbed: route %s -> %s: %w", from.Name, dst, err)
		}
	}
	return nil
}

// AddPod creates a pod on node n, attached to the node's pod bridge with a
// default route through the node.
func (n *Node) AddPod(name string) (*Pod, error) {
	b := n.bed
	n.pods++
	short := fmt.Sprintf("n%dp%d", n.Index, n.pods)
	h, err := b.newNetns(short)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	p := &Pod{Name: name, NS: b.nsName(short), IP: b.addr(n.Index, n.pods+1), Node: n}
	p.Path = "/var/run/netns/" + p.NS
	err = b.in(n.handle, func(nh *netlink.Handle) error {
		return vethTo(nh, "v"+short, "eth0", h, "pods")
	})
	if err != nil {
		return nil, fmt.Errorf("netbed: pod %s: %w", name, err)
	}
	err = b.in(h, func(ph *netlink.Handle) error {
		if err := linkUp(ph, "lo"); err != nil {
			return err
		}
		if err := addrUp(ph, "eth0", netip.PrefixFrom(p.IP, 24)); err != nil {
			return err
		}
		return ph.RouteAdd(&netlink.Route{Gw: b.addr(n.Index, 1).AsSlice()})
	})
	if err != nil {
		return nil, fmt.Errorf("netbed: pod %s: %w", name, err)
	}
	return p, nil
}

// Nodes lists the nodes in creation order.
func (b *Bed) Nodes() []*Node { return b.nodes }

// Close deletes every namespace the bed created (and with them their
// links); it is safe to call more than once.
func (b *Bed) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for i := len(b.names) - 1; i >= 0; i-- {
		if err := netns.DeleteNamed(b.names[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	b.names = nil
	for _, n := range b.nodes {
		n.handle.Close()
	}
	if b.fabric.IsOpen() {
		b.fabric.Close()
	}
	return errors.Join(errs...)
}

func (b *Bed) nsName(short string) string { return b.prefix + "-" + short }

func (b *Bed) addr(third, fourth int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(b.net), byte(third), byte(fourth)})
}

// newNetns creates a named namespace without moving the caller's thread.
func (b *Bed) newNetns(short string) (netns.NsHandle, error) {
	name := b.nsName(short)
	netns.DeleteNamed(name) // left behind by a run that crashed before Close
	errc := make(chan error, 1)
	var h netns.NsHandle
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		var err error
		h, err = netns.NewNamed(name)
		errc <- err
	}()
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("netbed: create netns %s: %w", name, err)
	}
	b.mu.Lock()
	b.names = append(b.names, name)
	b.mu.Unlock()
	return h, nil
}

// in runs fn with a netlink handle inside ns, after writing sysctls there.
func (b *Bed) in(ns netns.NsHandle, fn func(*netlink.Handle) error, sysctls ...func() error) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := fn(h); err != nil {
		return err
	}
	if len(sysctls) == 0 {
		return nil
	}
	return inThread(ns, func() error {
		for _, s := range sysctls {
			if err := s(); err != nil {
				return err
			}
		}
		return nil
	})
}

// inThread runs fn on a thread inside ns (for /proc/sys, which follows the
// thread's namespace).
func inThread(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func sysctl(path, value string) func() error {
	return func() error {
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
	}
}

// vethTo creates a veth pair in h's namespace, keeps the local end there
// (up, and attached to localBridge when set) and moves the remote end into
// ns, where the caller addresses it.
func vethTo(h *netlink.Handle, local, remote string, ns netns.NsHandle, localBridge string) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: local}, PeerName: remote}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s: %w", local, err)
	}
	peer, err := h.LinkByName(remote)
	if err != nil {
		return err
	}
	if err := h.LinkSetNsFd(peer, int(ns)); err != nil {
		return err
	}
	l, err := h.LinkByName(local)
	if err != nil {
		return err
	}
	if localBridge != "" {
		br, err := h.LinkByName(localBridge)
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return err
		}
	}
	return h.LinkSetUp(l)
}

func addBridge(h *netlink.Handle, name string, addr netip.Prefix) error {
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if addr.IsValid() {
		return addrUp(h, name, addr)
	}
	return linkUp(h, name)
}

func addrUp(h *netlink.Handle, name string, p netip.Prefix) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}
	a.IPNet.IP = p.Addr().AsSlice()
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, name, err)
	}
	return h.LinkSetUp(l)
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
