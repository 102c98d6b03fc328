package childproc

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
)

// Start starts cmd from the spawner thread, in this process's network
// namespace, with SIGKILL as its parent-death signal. Waiting for it is
// the caller's job.
func Start(cmd *exec.Cmd) error { return StartIn(netns.None(), cmd) }

// StartIn starts cmd as Start does, forked while the spawner thread is in
// network namespace ns (netns.None() for this process's own). The thread
// goes home right after the fork, so it keeps no namespace alive. Other
// namespaces (mount, PID) are this process's.
func StartIn(ns netns.NsHandle, cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	spawner.once.Do(func() { go spawnLoop() })
	done := make(chan error, 1)
	spawner.reqs <- spawnRequest{ns: ns, cmd: cmd, done: done}
	return <-done
}

var spawner = struct {
	once sync.Once
	reqs chan spawnRequest
}{reqs: make(chan spawnRequest)}

type spawnRequest struct {
	ns   netns.NsHandle
	cmd  *exec.Cmd
	done chan error
}

func spawnLoop() {
	runtime.LockOSThread() // never unlocked: this thread outlives every child
	home, err := netns.Get()
	if err != nil {
		err = fmt.Errorf("childproc: the spawner thread's own network namespace: %w", err)
	}
	for r := range spawner.reqs {
		switch {
		case !r.ns.IsOpen():
			r.done <- r.cmd.Start()
		case err != nil:
			r.done <- err
		default:
			r.done <- forkIn(home, r.ns, r.cmd)
		}
	}
}

// forkIn starts cmd from this thread while it is in ns, then brings the
// thread back to home.
func forkIn(home, ns netns.NsHandle, cmd *exec.Cmd) error {
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("childproc: enter the network namespace: %w", err)
	}
	err := cmd.Start()
	if herr := netns.Set(home); herr != nil {
		// The next request enters its own namespace anyway, but this one
		// would be kept alive: undo the start rather than leave it so.
		if err == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		return errors.Join(err, fmt.Errorf("childproc: leave the network namespace: %w", herr))
	}
	return err
}
