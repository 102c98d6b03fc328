package cni

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/fdtest"
)

// dialEnv makes the test binary a CNI client that asks for a snapshot on
// the socket it names and prints the reply line, or "dial: <error>".
const dialEnv = "REGOMESH_CNI_TEST_DIAL"

func TestMain(m *testing.M) {
	if socket := os.Getenv(dialEnv); socket != "" {
		os.Exit(dialOnce(socket))
	}
	os.Exit(m.Run())
}

func dialOnce(socket string) int {
	c, err := net.Dial("unix", socket)
	if err != nil {
		fmt.Println("dial:", err)
		return 0
	}
	defer c.Close()
	json.NewEncoder(c).Encode(Request{Op: OpSnapshot})
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("read:", err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// nobody is the unprivileged user the test's other client runs as.
const nobody = 65534

// asNobody runs the test binary, copied where nobody can execute it, as a
// client of socket, and returns what it printed.
func asNobody(t *testing.T, dir, socket string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{dialEnv + "=" + socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid %d: %v\n%s", nobody, err, out)
	}
	return string(out)
}

// The socket is the owner's only, and a client of another user is refused
// even when the socket's mode is loosened.
func TestSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as another user")
	}
	dir, err := os.MkdirTemp("", "rm-cni-peer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // nobody may reach the socket; its own mode decides
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "run", "ztunnel.sock")
	l, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(socket), 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if _, err := os.Stat(socket + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary socket name is left behind: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, l, &recorder{pods: map[string]Pod{}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket outlived its listener: %v", err)
		}
	}()

	if out := asNobody(t, dir, socket); !strings.Contains(out, "permission denied") {
		t.Errorf("uid %d reached the 0600 socket: %q", nobody, out)
	}
	if err := os.Chmod(socket, 0o666); err != nil { // as a careless mount might
		t.Fatal(err)
	}
	out := asNobody(t, dir, socket)
	var reply Reply
	if err := json.Unmarshal([]byte(out), &reply); err != nil {
		t.Fatalf("uid %d got %q, want a refusal", nobody, out)
	}
	if reply.OK || !strings.Contains(reply.Error, "only root") || !strings.Contains(reply.Error, fmt.Sprintf("uid %d", nobody)) {
		t.Errorf("uid %d got %+v, want a refusal naming its uid", nobody, reply)
	}
	pods, err := (&Client{Socket: socket}).Snapshot(ctx)
	if err != nil || len(pods) != 0 {
		t.Errorf("root's snapshot = %v, %v; want none and no error", pods, err)
	}
}

// Serve outlives running out of file descriptors: it logs, pauses, and
// answers again once descriptors are free.
func TestServeOutlastsDescriptorExhaustion(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "ztunnel.sock")
	l, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := net.Dial("unix", socket) // in the backlog when descriptors run out
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	warnings := make(chan string, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	restore := fdtest.Exhaust(t)
	go func() { done <- Serve(ctx, l, &recorder{pods: map[string]Pod{}}, slog.New(warnRecorder(warnings))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	select {
	case msg := <-warnings:
		if !strings.Contains(msg, "accept failed") || !strings.Contains(msg, "too many open files") {
			t.Errorf("logged %q, want the accept failure and its cause", msg)
		}
	case err := <-done:
		restore()
		done <- err
		t.Fatalf("Serve returned with descriptors exhausted: %v", err)
	case <-time.After(10 * time.Second):
		restore()
		t.Fatal("no accept failure logged with descriptors exhausted")
	}
	restore()
	if _, err := (&Client{Socket: socket}).Snapshot(ctx); err != nil {
		t.Errorf("snapshot after descriptors were freed: %v", err)
	}
}

// warnRecorder is a slog handler sending each warning, with its
// attributes, to ch (dropping it when ch is full).
func warnRecorder(ch chan<- string) slog.Handler { return recordHandler{ch} }

type recordHandler struct{ ch chan<- string }

func (h recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h recordHandler) WithGroup(string) slog.Handler                { return h }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
	select {
	case h.ch <- msg:
	default:
	}
	return nil
}
