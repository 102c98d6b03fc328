package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestNoThreadLeftInAPodNamespace: after traffic, every thread that runs
// ordinary goroutines is still in the process's own network namespace (a
// child process inherits the namespace of the thread that forks it).
func TestNoThreadLeftInAPodNamespace(t *testing.T) {
	before, err := exec.Command("readlink", "/proc/self/ns/net").Output()
	if err != nil {
		t.Fatal(err)
	}
	root := strings.TrimSpace(string(before))
	m := newMesh(t, allowFrontendToAPI)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	for i := range 20 { // each one works: the threads below did run it
		c, err := dialFrom(t, m.Pods["frontend"], fmt.Sprintf("%s:8080", api.IP))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		got, err := roundTrip(c, "x")
		c.Close()
		if err != nil || got != "x" {
			t.Fatalf("connection %d: echo %q, %v", i, got, err)
		}
	}
	for i := range 200 {
		out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != root {
			t.Fatalf("child %d started in network namespace %s, not the root's %s", i, got, root)
		}
	}
}
