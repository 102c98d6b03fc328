package netbed

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
)

// Start starts cmd inside the node's network namespace, as a node's
// daemon runs (the ztunnel binary, for localmesh). The child gets
// SIGKILL when this process dies, even when it is killed before its
// cleanups run; stopping it earlier, and waiting for it, is the caller's
// job. Other namespaces (mount, PID) are this process's.
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
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := spawnIn(ns, cmd); err != nil {
		return fmt.Errorf("netbed: start %s in %s: %w", cmd.Path, name, err)
	}
	return nil
}

// spawner forks every child from one OS thread that lives as long as this
// process. Linux sends the parent-death signal when the *thread* that
// forked a child exits, and Go retires threads that were locked and never
// unlocked, as every namespace switch in this package and in localmesh does:
// a child forked from such a thread would be killed as soon as the
// goroutine that switched ended. The thread enters the child's namespace
// only for the fork and then goes home, so it keeps no namespace alive
// after Close.
var spawner = struct {
	once sync.Once
	reqs chan spawnRequest
}{reqs: make(chan spawnRequest)}

type spawnRequest struct {
	ns   netns.NsHandle
	cmd  *exec.Cmd
	done chan error
}

func spawnIn(ns netns.NsHandle, cmd *exec.Cmd) error {
	spawner.once.Do(func() { go spawnLoop() })
	done := make(chan error, 1)
	spawner.reqs <- spawnRequest{ns: ns, cmd: cmd, done: done}
	return <-done
}

func spawnLoop() {
	runtime.LockOSThread() // never unlocked: this thread outlives every child
	home, err := netns.Get()
	if err != nil {
		err = fmt.Errorf("the spawner thread's own namespace: %w", err)
	}
	for r := range spawner.reqs {
		if err != nil {
			r.done <- err
			continue
		}
		r.done <- forkIn(home, r.ns, r.cmd)
	}
}

// forkIn starts cmd from this thread while it is in ns, then brings the
// thread back to home.
func forkIn(home, ns netns.NsHandle, cmd *exec.Cmd) error {
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter the namespace: %w", err)
	}
	err := cmd.Start()
	if herr := netns.Set(home); herr != nil {
		// The next request enters its own namespace anyway, but this one
		// would be kept alive: undo the start rather than leave it so.
		if err == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		return errors.Join(err, fmt.Errorf("leave the namespace: %w", herr))
	}
	return err
}
