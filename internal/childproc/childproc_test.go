package childproc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
)

func TestRunLogsAndStops(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sh.log")
	p, err := Run("sh", "/bin/sh", log, "-c", "echo ready; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(syscall.SIGKILL, time.Second)
	testgo.Eventually(t, "the child's first line in its log", func() bool { return strings.Contains(p.Logs(), "ready") })
	if p.Exited() {
		t.Fatalf("exited early: %v", p.Err())
	}
	p.Stop(syscall.SIGTERM, 10*time.Second)
	if !p.Exited() {
		t.Fatal("Stop returned before the process exited")
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("exit status %v, want terminated by SIGTERM", err)
	}
	if got := Tail("a\nb\nc\n", 2); got != "[... 1 earlier lines]\nb\nc" {
		t.Errorf("Tail = %q", got)
	}
}

// A child started from a goroutine whose locked thread then exits lives
// on: it was forked from the spawner's thread, not that one.
func TestChildOutlivesTheStartersThread(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sleep.log")
	started := make(chan *Process, 1)
	tid := make(chan int, 1)
	// Go ends a thread whose goroutine exits locked to it, but for the
	// process's main thread, which it keeps (wedged). A goroutine that lands
	// there starts the run from another goroutine, which cannot run on a
	// thread locked to this one, and waits for it before it unlocks.
	var start func()
	start = func() {
		runtime.LockOSThread() // never unlocked but on the main thread: Go ends the thread with the goroutine
		if syscall.Gettid() == syscall.Getpid() {
			done := make(chan struct{})
			go func() { defer close(done); start() }()
			<-done
			runtime.UnlockOSThread()
			return
		}
		tid <- syscall.Gettid()
		p, err := Run("sleep", "/bin/sleep", log, "60")
		if err != nil {
			t.Error(err)
		}
		started <- p
	}
	go start()
	task := fmt.Sprintf("/proc/self/task/%d", <-tid)
	p := <-started
	if p == nil {
		t.FailNow()
	}
	defer p.Stop(syscall.SIGKILL, time.Second)
	testgo.Eventually(t, "the starting goroutine's thread to end", func() bool {
		_, err := os.Stat(task)
		return os.IsNotExist(err)
	})
	p.Stop(syscall.SIGTERM, 10*time.Second)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("exit status %v, want terminated by our SIGTERM (killed means the parent-death signal came with the thread)", err)
	}
}

// A child dies with this process, even one killed before its cleanups.
func TestChildDiesWithTheProcess(t *testing.T) {
	if os.Getenv("CHILDPROC_HELPER") == "1" {
		p, err := Run("sleep", "/bin/sleep", filepath.Join(os.TempDir(), "childproc-helper.log"), "60")
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(p.cmd.Process.Pid)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithTheProcess$")
	helper.Env = append(os.Environ(), "CHILDPROC_HELPER=1")
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	_ = helper.Wait() // killed, as it meant to be
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the helper printed %q, not its child's pid", line)
	}
	testgo.Eventually(t, fmt.Sprintf("sleep (pid %d) to die with its parent", pid), func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true // gone, reaped
		}
		// A zombie is dead; the field after the parenthesised name is the state.
		s := string(stat)
		return strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
	})
}
