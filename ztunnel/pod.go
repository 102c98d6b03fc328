package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/internal/accept"
	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// pod is one enrolled pod: its capture rules and ztunnel's three listeners
// inside its network namespace, its HBONE server (presenting the pod's
// SVID) and its client pool (dialing from the pod's namespace, so tunnels
// leave with the pod's address).
type pod struct {
	info     cni.Pod
	id       spiffeid.ID
	workload *state.Workload
	// net makes the pod's sockets; ns is the network namespace behind it,
	// whose capture rules ztunnel installs and removes (nil for a pod whose
	// network is not a namespace: tests run pods on loopback).
	net       podNet
	ns        *capture.Netns
	outbound  net.Listener
	plaintext net.Listener
	hbone     net.Listener
	server    *hbone.Server
	pool      *hbone.Pool
	log       *slog.Logger
	stopOnce  sync.Once
	wg        sync.WaitGroup
}

// AddPod enrols a pod: from now on its traffic goes through ztunnel. The
// pod must be in the mesh state (its workload gives its identity and
// addresses); a pod already enrolled is refreshed.
func (z *Ztunnel) AddPod(ctx context.Context, info cni.Pod) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.stopping {
		return errors.New("ztunnel: shutting down")
	}
	if old := z.pods[info.UID]; old != nil {
		delete(z.pods, info.UID)
		z.releasePod(old)
	}
	p, err := z.enroll(info)
	if err != nil {
		return err
	}
	z.pods[info.UID] = p
	z.savePods()
	z.log.Info("pod enrolled", "pod", info.Namespace+"/"+info.Name, "identity", p.id, "netns", info.Netns)
	return nil
}

// RemovePod stops capturing a pod and releases its SVID.
func (z *Ztunnel) RemovePod(_ context.Context, uid string) error {
	z.mu.Lock()
	p := z.pods[uid]
	delete(z.pods, uid)
	if p != nil {
		z.savePods()
	}
	z.mu.Unlock()
	if p == nil {
		return nil
	}
	z.log.Info("pod removed", "pod", p.info.Namespace+"/"+p.info.Name)
	return z.releasePod(p)
}

// Pods lists the enrolled pods.
func (z *Ztunnel) Pods() []cni.Pod {
	z.mu.Lock()
	defer z.mu.Unlock()
	out := make([]cni.Pod, 0, len(z.pods))
	for _, p := range z.pods {
		out = append(out, p.info)
	}
	return out
}

func (z *Ztunnel) releasePod(p *pod) error {
	err := p.close()
	if p.ns != nil {
		err = errors.Join(err, capture.Remove(p.ns))
	}
	z.cfg.Identities.Release(p.id)
	if p.ns != nil {
		err = errors.Join(err, p.ns.Close())
	}
	return err
}

// enroll opens everything a pod needs: its network namespace, checked to
// be the pod's, ztunnel's listeners and servers in it (startPod), and
// its capture rules. On failure it undoes what it did.
func (z *Ztunnel) enroll(info cni.Pod) (*pod, error) {
	w, err := z.workloadOf(info)
	if err != nil {
		return nil, err
	}
	ns, err := capture.OpenNetns(info.Netns)
	if err != nil {
		return nil, err
	}
	if err := z.checkNetns(ns, info, w); err != nil {
		ns.Close()
		return nil, err
	}
	p, err := z.startPod(info, w, netnsNet{ns})
	if err != nil {
		ns.Close()
		return nil, err
	}
	if err := capture.Install(ns); err != nil {
		p.close()
		z.cfg.Identities.Release(p.id)
		ns.Close()
		return nil, err
	}
	p.ns = ns
	return p, nil
}

// startPod serves the pod of workload w on pn: it holds the pod's SVID,
// opens its three listeners, starts its HBONE server, its pool and its
// accept loops. On failure it undoes what it did.
func (z *Ztunnel) startPod(info cni.Pod, w *state.Workload, pn podNet) (*pod, error) {
	id, err := z.identityOf(w.Namespace, w.ServiceAccount)
	if err != nil {
		return nil, err
	}
	p := &pod{info: info, id: id, workload: w, net: pn, log: z.log.With("pod", info.Namespace+"/"+info.Name)}
	if err := z.cfg.Identities.Hold(id, w.Namespace, w.ServiceAccount); err != nil {
		return nil, fmt.Errorf("ztunnel: pod %s/%s: %w", info.Namespace, info.Name, err)
	}
	err = p.listen()
	if err == nil {
		err = z.startServers(p)
	}
	if err != nil {
		p.close()
		z.cfg.Identities.Release(id)
		return nil, err
	}
	return p, nil
}

// workloadOf finds the pod's workload in the mesh state.
func (z *Ztunnel) workloadOf(info cni.Pod) (*state.Workload, error) {
	snap := z.state.Load()
	if snap == nil {
		return nil, errors.New("ztunnel: no mesh state loaded yet")
	}
	w, ok := snap.Workload(info.Namespace, info.Name)
	if !ok {
		return nil, fmt.Errorf("ztunnel: pod %s/%s is not in the mesh state", info.Namespace, info.Name)
	}
	if z.cfg.Node != "" && w.Node != "" && w.Node != z.cfg.Node {
		return nil, fmt.Errorf("ztunnel: pod %s/%s runs on node %s, not %s", info.Namespace, info.Name, w.Node, z.cfg.Node)
	}
	if info.ServiceAccount != "" && info.ServiceAccount != w.ServiceAccount {
		return nil, fmt.Errorf("ztunnel: pod %s/%s: service account %q disagrees with the mesh state's %q",
			info.Namespace, info.Name, info.ServiceAccount, w.ServiceAccount)
	}
	return w, nil
}

// checkNetns refuses a namespace that is not the pod's: the node's or
// ztunnel's own (capturing it would take the node's or ztunnel's traffic),
// or one that does not hold every address the mesh state and the request
// give the pod (ztunnel would otherwise speak for those addresses from a
// namespace that does not own them).
func (z *Ztunnel) checkNetns(ns *capture.Netns, info cni.Pod, w *state.Workload) error {
	pod := info.Namespace + "/" + info.Name
	id, err := ns.ID()
	if err != nil {
		return fmt.Errorf("ztunnel: pod %s: %w", pod, err)
	}
	for _, other := range z.notPods {
		if id == other.id {
			return fmt.Errorf("ztunnel: pod %s: netns %s is %s, not a pod's: refused", pod, info.Netns, other.what)
		}
	}
	held, err := ns.Addrs()
	if err != nil {
		return fmt.Errorf("ztunnel: pod %s: %w", pod, err)
	}
	want := slices.Clone(w.IPs)
	for _, s := range info.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("ztunnel: pod %s: address %q: %w", pod, s, err)
		}
		want = append(want, ip.Unmap())
	}
	for _, ip := range want {
		if !slices.Contains(held, ip) {
			return fmt.Errorf("ztunnel: pod %s: netns %s does not hold %s (the pod's address in the mesh state or the request): refused", pod, info.Netns, ip)
		}
	}
	return nil
}

// notPod is a network namespace no pod has: ztunnel's own or the node's.
type notPod struct {
	id   capture.NetnsID
	what string
}

// namespacesNotPods identifies ztunnel's own network namespace, which it
// must read, and the node's (PID 1's), when it can: in a container with
// its own PID namespace, PID 1 is the container's and may be unreadable.
func namespacesNotPods(log *slog.Logger) ([]notPod, error) {
	self, err := capture.IdentifyNetns(capture.SelfNetnsPath)
	if err != nil {
		return nil, fmt.Errorf("ztunnel: its own network namespace: %w", err)
	}
	out := []notPod{{self, "ztunnel's own network namespace"}}
	host, err := capture.IdentifyNetns(capture.HostNetnsPath)
	switch {
	case err != nil:
		log.Warn("cannot read the node's network namespace: CNI requests naming it are refused only if it is ztunnel's own", "path", capture.HostNetnsPath, "error", err)
	case host != self:
		out = append(out, notPod{host, "the node's network namespace"})
	}
	return out, nil
}

// listen opens the pod's three listeners in its network.
func (p *pod) listen() error {
	var err error
	if p.outbound, err = p.net.Listen(fmt.Sprintf(":%d", capture.OutboundPort)); err != nil {
		return err
	}
	if p.plaintext, err = p.net.Listen(fmt.Sprintf(":%d", capture.PlaintextPort)); err != nil {
		return err
	}
	p.hbone, err = p.net.Listen(fmt.Sprintf(":%d", capture.HBONEPort))
	return err
}

func (z *Ztunnel) startServers(p *pod) error {
	var err error
	p.server, err = hbone.NewServer(hbone.ServerConfig{
		SVID:    svidOf{z.cfg.Identities, p.id},
		Bundle:  z.cfg.Identities.Bundles(p.id),
		Handler: hbone.HandlerFunc(func(ctx context.Context, t *hbone.Tunnel) { z.serveTunnel(ctx, p, t) }),
		Conn:    z.cfg.Conn,
		Logger:  p.log,
	})
	if err != nil {
		return fmt.Errorf("ztunnel: pod %s: %w", p.id, err)
	}
	p.pool, err = hbone.NewPool(hbone.PoolConfig{
		Bundle: z.cfg.Identities.Bundles(p.id),
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return p.net.Dial(ctx, addr)
		},
		Conn:   z.cfg.Conn,
		Logger: p.log,
	})
	if err != nil {
		return fmt.Errorf("ztunnel: pod %s: %w", p.id, err)
	}
	p.wg.Go(func() { p.server.Serve(p.hbone) })
	p.wg.Go(func() { z.acceptLoop(p, p.outbound, z.serveOutbound) })
	p.wg.Go(func() { z.acceptLoop(p, p.plaintext, z.servePlaintext) })
	return nil
}

// acceptLoop serves l until stopAccepting closes it. Other failures (out
// of file descriptors, say) are logged and retried with a growing pause:
// returning would leave the pod's traffic captured and unserved.
func (z *Ztunnel) acceptLoop(p *pod, l net.Listener, serve func(*pod, net.Conn)) {
	var backoff accept.Backoff
	for {
		c, err := l.Accept()
		if err != nil {
			if !backoff.Retry(context.Background(), err) {
				return
			}
			p.log.Warn("accept failed, retrying", "addr", l.Addr(), "error", err, "after", backoff.Delay())
			continue
		}
		backoff.Reset()
		go serve(p, c)
	}
}

// owns reports whether addr is one of the pod's addresses.
func (p *pod) owns(addr netip.Addr) bool {
	for _, ip := range p.workload.IPs {
		if ip == addr.Unmap() {
			return true
		}
	}
	return false
}

// stopAccepting closes the listeners; open connections go on.
func (p *pod) stopAccepting() {
	p.stopOnce.Do(func() {
		for _, l := range []net.Listener{p.outbound, p.plaintext, p.hbone} {
			if l != nil {
				l.Close()
			}
		}
	})
}

// close stops everything of the pod and waits for its loops.
func (p *pod) close() error {
	p.stopAccepting()
	var errs []error
	if p.server != nil {
		errs = append(errs, p.server.Close())
	}
	if p.pool != nil {
		errs = append(errs, p.pool.Close())
	}
	p.wg.Wait()
	return errors.Join(errs...)
}
