package netbed

import (
	"fmt"
	"os/exec"

	"github.com/vishvananda/netns"

	"github.com/regomesh/regomesh/internal/childproc"
)

// Start starts cmd inside the node's network namespace, as a node's
// daemon runs (the ztunnel binary, for localmesh), with childproc.StartIn:
// the child gets SIGKILL when this process dies, even when it is killed
// before its cleanups run; stopping it earlier, and waiting for it, is the
// caller's job. Other namespaces (mount, PID) are this process's.
func (n *Node) Start(cmd *exec.Cmd) error { return start(n.handle, n.NS, cmd) }

// Start starts cmd inside the pod's network namespace, as Node.Start
// does (a baseline proxy in a pod, for test/bench).
func (p *Pod) Start(cmd *exec.Cmd) error {
	h, err := netns.GetFromPath(p.Path)
	if err != nil {
		return fmt.Errorf("netbed: open %s: %w", p.Path, err)
	}
	defer h.Close()
	return start(h, p.NS, cmd)
}

func start(ns netns.NsHandle, name string, cmd *exec.Cmd) error {
	if err := childproc.StartIn(ns, cmd); err != nil {
		return fmt.Errorf("netbed: start %s in %s: %w", cmd.Path, name, err)
	}
	return nil
}
