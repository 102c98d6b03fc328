package opabundles

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/childproc"
)

// nginxRequiredEnv, set by make test, turns a missing nginx into a
// failure instead of a skip.
const nginxRequiredEnv = "REGOMESH_REQUIRE_NGINX"

// nginx is a real nginx serving the files under root on addr, as a child
// process with its own configuration, logs and pid file in a temporary
// directory: one process (master_process off), killed at stop or at the
// end of the test. Static files get nginx's own ETags (modification time
// and size) and answer If-None-Match with 304 Not Modified.
type nginx struct {
	bin, dir, root, addr string
	proc                 *childproc.Process
}

func findNginx(t *testing.T) string {
	t.Helper()
	for _, candidate := range []string{"nginx", "/usr/sbin/nginx"} {
		if bin, err := exec.LookPath(candidate); err == nil {
			return bin
		}
	}
	if os.Getenv(nginxRequiredEnv) != "" {
		t.Fatalf("nginx is not installed and %s is set (make test installs the Debian package nginx in test-prereqs)", nginxRequiredEnv)
	}
	t.Skip("nginx is not installed: apt-get install -y nginx (make test installs it)")
	return ""
}

// newNginx configures nginx for root on a free loopback port; start runs it.
func newNginx(t *testing.T, root string) *nginx {
	t.Helper()
	n := &nginx{bin: findNginx(t), dir: t.TempDir(), root: root, addr: freeAddr(t)}
	conf := fmt.Sprintf(`master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
	log_format bundles '$request_uri $status "$http_if_none_match" "$sent_http_etag"';
	access_log %[1]s/access.log bundles;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	types { application/gzip gz; }
	default_type application/octet-stream;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, n.dir, n.addr, root)
	if err := os.WriteFile(filepath.Join(n.dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// freeAddr is a free loopback address whose port is below the range of
// ephemeral ports: nginx is stopped and started again on it, and a port
// of that range could meanwhile be taken by a client's connection (the
// downloader's own, retrying, could even connect to itself).
func freeAddr(t *testing.T) string {
	t.Helper()
	const low, high = 20000, 32000 // Linux's ephemeral range starts at 32768
	start := rand.IntN(high - low)
	for i := range high - low {
		addr := fmt.Sprintf("127.0.0.1:%d", low+(start+i)%(high-low))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatalf("no free loopback port in [%d, %d)", low, high)
	return ""
}

// start runs nginx and waits until it answers on its address. It is a
// child that dies with the test binary (internal/childproc), stopped when
// the test ends at the latest.
func (n *nginx) start(t *testing.T) {
	t.Helper()
	p, err := childproc.Run("nginx", n.bin, filepath.Join(n.dir, "stdout.log"),
		"-p", n.dir, "-c", filepath.Join(n.dir, "nginx.conf"), "-e", filepath.Join(n.dir, "error.log"), "-g", "daemon off;")
	if err != nil {
		t.Fatal(err)
	}
	n.proc = p
	t.Cleanup(n.stop)
	waitFor(t, "nginx answers on "+n.addr, func() bool {
		if p.Exited() {
			t.Fatalf("nginx exited: %v%s", p.Err(), n.logs())
		}
		resp, err := http.Get("http://" + n.addr + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
}

// stop kills nginx and waits for it to exit: the server is gone.
func (n *nginx) stop() {
	n.proc.Stop(syscall.SIGKILL, time.Minute)
}

func (n *nginx) logs() string {
	var b strings.Builder
	for _, name := range []string{"stdout.log", "error.log"} {
		if src, err := os.ReadFile(filepath.Join(n.dir, name)); err == nil && len(src) > 0 {
			fmt.Fprintf(&b, "\n%s:\n%s", name, src)
		}
	}
	return b.String()
}

// accessLog is nginx's access log: one line per request, with the
// status, the If-None-Match sent and the ETag answered.
func (n *nginx) accessLog(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(n.dir, "access.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(src)
}

// publish replaces root/name with contents, atomically, stamped with a
// modification time of its own: nginx's ETag is the time (in seconds) and
// the size, so each version published gets a distinct ETag.
func publish(t *testing.T, root, name string, contents []byte, version int) {
	t.Helper()
	path := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, contents, 0o644); err != nil {
		t.Fatal(err)
	}
	stamp := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(version) * time.Hour)
	if err := os.Chtimes(tmp, stamp, stamp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestNginxServesSignedRevisions downloads a signed bundle from a real
// nginx with OPA's downloader: the first revision makes the set ready;
// 304 Not Modified answers change nothing; a new revision flips the
// decisions; copies with a bad or missing signature are rejected and the
// last good set stays; nginx going away leaves it in force, and the
// revision published meanwhile is picked up when nginx is back.
func TestNginxServesSignedRevisions(t *testing.T) {
	root := t.TempDir()
	srv := newNginx(t, root)
	key, other := newRSAKeys(t), newRSAKeys(t)
	const file = "bundles/authz.tar.gz"
	publish(t, root, file, denyPort{"remote", "r1", 1}.tarball(t, &key, ""), 1)
	srv.start(t)

	h := startSet(t, fmt.Sprintf(`
services:
  nginx:
    url: http://%s
keys:
  global:
    algorithm: RS256
    key: |
%s
bundles:
  authz:
    service: nginx
    resource: %s
    signing:
      keyid: global
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
`, srv.addr, indent(key.public, "      "), file), Options{})

	// The first revision: ready, deciding with it.
	waitFor(t, "the set is ready", func() bool { return h.set.Ready() == nil })
	if got := h.revision("authz"); got != "r1" {
		t.Fatalf("revision %q, want r1", got)
	}
	h.wantDecisions(t, map[int]string{1: "remote/p", 2: ""})
	generation := h.engine.Generation()

	// Polls answered 304 Not Modified: nothing is activated again.
	waitFor(t, "two 304 answers", func() bool { return h.notModified("authz") >= 2 })
	if g, a := h.engine.Generation(), h.activations("authz"); g != generation || a != 1 {
		t.Errorf("after 304s: generation %d (want %d), activations %v (want 1)", g, generation, a)
	}
	if log := srv.accessLog(t); !strings.Contains(log, "/"+file+" 304 ") {
		t.Errorf("nginx answered no 304 to the downloader's If-None-Match:\n%s", log)
	}

	// A new revision: applied, and the decisions flip.
	publish(t, root, file, denyPort{"remote", "r2", 2}.tarball(t, &key, ""), 2)
	h.waitRevision(t, "authz", "r2")
	h.wantDecisions(t, map[int]string{1: "", 2: "remote/p"})
	if a := h.activations("authz"); a != 2 {
		t.Errorf("activations %v, want 2", a)
	}
	generation = h.engine.Generation()

	// Signed with another key, then not signed at all: rejected, the
	// last good set stays.
	for i, tarball := range [][]byte{
		denyPort{"remote", "r3", 3}.tarball(t, &other, ""),
		denyPort{"remote", "r3", 3}.tarball(t, nil, ""),
	} {
		before := h.failures("authz", reasonBundle)
		publish(t, root, file, tarball, 3+i)
		h.waitFailures(t, "authz", reasonBundle, before+1)
		if got, g := h.revision("authz"), h.engine.Generation(); got != "r2" || g != generation {
			t.Fatalf("bad copy %d: revision %q generation %d, want r2 and %d", i, got, g, generation)
		}
		h.wantDecisions(t, map[int]string{2: "remote/p", 3: ""})
	}

	// nginx goes away: downloads fail, the last good set stays.
	srv.stop()
	before := h.failures("authz", reasonDownload)
	h.waitFailures(t, "authz", reasonDownload, before+2)
	if got := h.revision("authz"); got != "r2" || h.set.Ready() != nil {
		t.Fatalf("server gone: revision %q ready %v, want r2 and ready", got, h.set.Ready())
	}
	h.wantDecisions(t, map[int]string{2: "remote/p", 4: ""})

	// It comes back with a new revision, which is picked up.
	publish(t, root, file, denyPort{"remote", "r4", 4}.tarball(t, &key, ""), 5)
	srv.start(t)
	h.waitRevision(t, "authz", "r4")
	h.wantDecisions(t, map[int]string{2: "", 4: "remote/p"})
}
