package cni

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// recorder is a Handler keeping pods in memory; AddPod refuses netns
// paths that do not exist, as ztunnel's does.
type recorder struct {
	mu   sync.Mutex
	pods map[string]Pod
}

func (r *recorder) AddPod(_ context.Context, p Pod) error {
	if _, err := os.Stat(p.Netns); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods[p.UID] = p
	return nil
}

func (r *recorder) RemovePod(_ context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pods, uid)
	return nil
}

func (r *recorder) Pods() []Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Pod
	for _, p := range r.pods {
		out = append(out, p)
	}
	return out
}

func serve(t *testing.T) (*Client, *recorder) {
	t.Helper()
	dir, err := os.MkdirTemp("", "rm-cni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "z.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &recorder{pods: map[string]Pod{}}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, h, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &Client{Socket: socket}, h
}

func TestAddDeleteSnapshot(t *testing.T) {
	c, _ := serve(t)
	ctx := context.Background()
	netns := t.TempDir() // any existing path stands for the netns here
	pod := Pod{UID: "u1", Name: "web-1", Namespace: "shop", Netns: netns, IPs: []string{"10.0.0.1"}}
	if err := c.Add(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Snapshot(ctx)
	if err != nil || len(pods) != 1 || pods[0].Name != "web-1" || pods[0].IPs[0] != "10.0.0.1" {
		t.Fatalf("snapshot = %+v, %v", pods, err)
	}
	if err := c.Delete(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "u1"); err != nil {
		t.Errorf("deleting twice must succeed (CNI DEL is idempotent): %v", err)
	}
	if pods, _ := c.Snapshot(ctx); len(pods) != 0 {
		t.Errorf("snapshot after delete = %+v", pods)
	}
}

func TestRefusals(t *testing.T) {
	c, _ := serve(t)
	ctx := context.Background()
	cases := []struct {
		name string
		pod  Pod
		want string
	}{
		{"no uid", Pod{Name: "a", Namespace: "b", Netns: "/x"}, "uid is required"},
		{"no netns", Pod{UID: "u", Name: "a", Namespace: "b"}, "netns path is required"},
		{"handler error", Pod{UID: "u", Name: "a", Namespace: "b", Netns: "/no/such/netns"}, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Add(ctx, tc.pod)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "ztunnel refused add") {
				t.Errorf("error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if _, err := c.do(ctx, Request{Op: "bogus"}); err == nil || !strings.Contains(err.Error(), `unknown op "bogus"`) {
		t.Errorf("unknown op: %v", err)
	}
}

func TestNoZtunnel(t *testing.T) {
	c := &Client{Socket: filepath.Join(t.TempDir(), "absent.sock")}
	err := c.Add(context.Background(), Pod{UID: "u", Name: "a", Namespace: "b", Netns: "/x"})
	var op *net.OpError
	if !errors.As(err, &op) || !strings.Contains(err.Error(), "is ztunnel running") {
		t.Errorf("error = %v", err)
	}
}
