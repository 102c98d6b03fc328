package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// process is one run of a SPIRE binary, its output appended to a log file
// that outlives restarts.
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
		return nil, fmt.Errorf("harness: %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := spawn(cmd); err != nil {
		log.Close()
		return nil, fmt.Errorf("harness: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends sig and waits for the exit; after grace it kills.
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logs returns the process's log file (all runs).
func (p *process) logs() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no logs: %v)", err)
	}
	return string(b)
}

// waitHealthy polls gRPC health on the unix socket until it answers
// SERVING, the process exits, or ctx ends.
func (p *process) waitHealthy(ctx context.Context, socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("harness: %s health: %w", p.name, err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	var last error
	for {
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(callCtx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if last = err; err == nil {
			last = fmt.Errorf("status %s", resp.GetStatus())
		}
		select {
		case <-p.done:
			return fmt.Errorf("harness: %s exited (%v) before it was healthy; its log:\n%s", p.name, p.err, tail(p.logs(), 40))
		case <-ctx.Done():
			return fmt.Errorf("harness: %s not healthy on %s: %w (last check: %w); its log:\n%s",
				p.name, socket, ctx.Err(), last, tail(p.logs(), 40))
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// spawner starts every SPIRE process from one OS thread that lives as long
// as the test process. Linux sends the parent-death signal (Pdeathsig)
// when the *thread* that forked a child exits, and Go retires threads that
// a goroutine locked and never unlocked, as network namespace code does
// (localmesh/netbed, ztunnel/capture): a child forked from such a thread would
// be killed mid-test.
var spawner = struct {
	once sync.Once
	reqs chan spawnRequest
}{reqs: make(chan spawnRequest)}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: this thread outlives every child
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawner.reqs <- spawnRequest{cmd: cmd, done: done}
	return <-done
}
