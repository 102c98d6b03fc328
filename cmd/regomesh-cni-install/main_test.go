package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func dirs(t *testing.T) (bin, conf, plugin string) {
	t.Helper()
	root := t.TempDir()
	bin, conf, plugin = filepath.Join(root, "bin"), filepath.Join(root, "net.d"), filepath.Join(root, "regomesh-cni")
	os.Mkdir(bin, 0o755)
	os.Mkdir(conf, 0o755)
	os.WriteFile(plugin, []byte("plugin"), 0o755)
	os.WriteFile(filepath.Join(conf, "10-net.conflist"), []byte(`{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"ptp"}]}`), 0o644)
	return bin, conf, plugin
}

// The command installs, keeps the plugin at a restart (--on-exit=keep),
// and --uninstall takes it out.
func TestInstallRestartUninstall(t *testing.T) {
	bin, conf, plugin := dirs(t)
	flags := []string{"--cni-bin-dir", bin, "--cni-conf-dir", conf, "--plugin", plugin, "--ztunnel-socket", "/run/z.sock", "--poll", "10ms"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() { done <- run(ctx, append(flags, "--on-exit", "keep"), &stderr) }()
	list := filepath.Join(conf, "10-net.conflist")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(list)
		if strings.Contains(string(b), `"ztunnelSocket": "/run/z.sock"`) {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("not installed:\n%s\n%s", b, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("install exited %d:\n%s", code, stderr.String())
	}
	if b, _ := os.ReadFile(list); !strings.Contains(string(b), "regomesh-cni") {
		t.Fatalf("--on-exit=keep removed the plugin:\n%s", b)
	}
	if code := run(context.Background(), []string{"--cni-bin-dir", bin, "--cni-conf-dir", conf, "--uninstall"}, &stderr); code != 0 {
		t.Fatalf("--uninstall exited %d:\n%s", code, stderr.String())
	}
	if b, _ := os.ReadFile(list); strings.Contains(string(b), "regomesh-cni") || !strings.Contains(string(b), "ptp") {
		t.Fatalf("after --uninstall:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(bin, "regomesh-cni")); !os.IsNotExist(err) {
		t.Fatalf("the binary stays after --uninstall: %v", err)
	}
}

func TestRefusesBadFlags(t *testing.T) {
	bin, conf, plugin := dirs(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--on-exit", "sometimes"}, `want auto, keep or remove`},
		{[]string{"--on-exit", "auto", "--daemonset-namespace", ""}, "needs the DaemonSet's namespace"},
		{[]string{"stray"}, "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"--cni-bin-dir", bin, "--cni-conf-dir", conf, "--plugin", plugin}, c.args...)
		if code := run(context.Background(), args, &stderr); code != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, stderr.String(), c.want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(conf, "10-net.conflist")); strings.Contains(string(b), "regomesh-cni") {
		t.Error("a refused command installed the plugin")
	}
}
