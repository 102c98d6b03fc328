package kubeharness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one run of etcd or kube-apiserver, its output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, set before done closes
}

// startProcess runs bin with args, output to logPath.
func startProcess(name, bin, logPath string, args ...string) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kubeharness: %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := spawn(cmd); err != nil {
		log.Close()
		return nil, fmt.Errorf("kubeharness: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		release()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends sig and waits for the exit; after grace it kills. A nil or
// exited process is left as it is.
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logs returns the process's log file.
func (p *process) logs() string {
	if p == nil {
		return "(not started)"
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no logs: %v)", err)
	}
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return s
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "[... %d earlier lines]\n", len(lines)-n)
	b.WriteString(strings.Join(lines[len(lines)-n:], "\n"))
	return b.String()
}

// spawner starts every process from one OS thread that lives as long as
// any process it started. Linux sends the parent-death signal (Pdeathsig)
// when the *thread* that forked a child exits, and Go retires threads that
// a goroutine locked and never unlocked, as network namespace code does
// (localmesh/netbed, ztunnel/capture): a child forked from such a thread
// would be killed mid-test. (spire/harness does the same for SPIRE, with a
// thread that lives as long as the test process.) When the last child has
// exited, the thread ends with its goroutine; the next spawn starts another.
var spawner struct {
	mu   sync.Mutex
	reqs chan spawnRequest // nil while no spawner runs
	live int               // processes started and not yet waited for, plus spawns under way
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// spawn starts cmd from the spawner's thread. Unless it returns an error,
// the caller must call release once cmd.Wait has returned.
func spawn(cmd *exec.Cmd) error {
	spawner.mu.Lock()
	if spawner.reqs == nil {
		spawner.reqs = make(chan spawnRequest)
		go func(reqs <-chan spawnRequest) {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			for r := range reqs {
				r.done <- r.cmd.Start()
			}
		}(spawner.reqs)
	}
	spawner.live++
	reqs := spawner.reqs
	spawner.mu.Unlock()

	done := make(chan error, 1)
	reqs <- spawnRequest{cmd: cmd, done: done}
	err := <-done
	if err != nil {
		release()
	}
	return err
}

// release records that a spawned process has been waited for; after the
// last one, the spawner's goroutine and thread end.
func release() {
	spawner.mu.Lock()
	defer spawner.mu.Unlock()
	if spawner.live--; spawner.live == 0 {
		close(spawner.reqs)
		spawner.reqs = nil
	}
}
