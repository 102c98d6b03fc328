package bundleserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/internal/testports"
)

// TestStockOPA: an unmodified OPA (bin/opa, make tools) downloads the
// signed mesh bundle from the server with a ztunnel's SVID as its client
// certificate, verifies it, decides with it, and picks up a new revision
// by long polling (its polling delays are far longer than the test's
// bounds).
func TestStockOPA(t *testing.T) {
	opa, err := filepath.Abs("../../bin/opa")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(opa); err != nil {
		t.Skip("bin/opa not built (make tools)")
	}
	key := newKey(t, "RS256")
	b := newBed(t, bundleserver.Config{Signer: signer(t, key, "RS256")})
	v1 := translated(t, allowFrom("front"))
	b.srv.Update(&controller.Update{Bundle: v1})

	dir := t.TempDir()
	svid := b.ca.SVID(t, ztunnelPath)
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := b.ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	config := fmt.Sprintf(`services:
  controller:
    url: https://localhost:%s
    tls:
      ca_cert: %s
    credentials:
      client_tls:
        cert: %s
        private_key: %s
bundles:
  mesh:
    service: controller
    resource: bundles/mesh
    polling:
      min_delay_seconds: 600
      max_delay_seconds: 1200
      long_polling_timeout_seconds: 60
    signing:
      keyid: %s
keys:
  %s:
    algorithm: RS256
    key: |
%s`, port(t, b.addr), write("ca.pem", caPEM), write("cert.pem", certPEM), write("key.pem", keyPEM),
		bundleserver.DefaultKeyID, bundleserver.DefaultKeyID, indent(string(key.public), "      "))
	api := startOPA(t, opa, write("config.yaml", []byte(config)), "../../rego/mesh/authz")

	from := func(ns string) string {
		return `{"input": {"layer": "l4", "source": {"principal": "spiffe://cluster.local/ns/` + ns + `/sa/x", "namespace": "` + ns +
			`"}, "destination": {"namespace": "shop"}}}`
	}
	waitOPA(t, api, v1.Revision, map[string]bool{"front": true, "back": false}, from)

	v2 := translated(t, allowFrom("back"))
	b.srv.Update(&controller.Update{Bundle: v2})
	waitOPA(t, api, v2.Revision, map[string]bool{"front": false, "back": true}, from)
}

// waitOPA waits until OPA's REST API shows bundle "mesh" at revision and
// allows exactly the namespaces allowed says.
func waitOPA(t *testing.T, api, revision string, allowed map[string]bool, input func(ns string) string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		got := opaGet(t, api+"/v1/data/system/bundles/mesh/manifest/revision", "")
		if got == `"`+revision+`"` {
			ok := true
			for ns, want := range allowed {
				allow := opaGet(t, api+"/v1/data/mesh/authz/decision/allow", input(ns))
				last = fmt.Sprintf("revision %s; %s allowed: %s", got, ns, allow)
				ok = ok && allow == fmt.Sprint(want)
			}
			if ok {
				return
			}
		} else {
			last = "revision " + got
		}
		if time.Now().After(deadline) {
			t.Fatalf("OPA never reached revision %s deciding %v; last: %s", revision, allowed, last)
		}
		time.Sleep(50 * time.Millisecond) // OPA's state, polled over its API
	}
}

// opaGet returns the "result" of a data API call (GET, or POST with an
// input document), "" when undefined or OPA is not up yet.
func opaGet(t *testing.T, url, input string) string {
	t.Helper()
	var resp *http.Response
	var err error
	if input == "" {
		resp, err = http.Get(url)
	} else {
		resp, err = http.Post(url, "application/json", strings.NewReader(input))
	}
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(body.Result)
}

// startOPA runs `opa run --server` with config and the library paths on
// a free loopback port, and stops it when the test ends. It returns the
// REST API's base URL.
func startOPA(t *testing.T, opa, config string, paths ...string) string {
	t.Helper()
	addr := testports.Addr(t)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "opa.log"))
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--server", "--addr", addr, "--log-level", "error", "-c", config}, paths...)
	cmd := exec.Command(opa, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := testgo.Go(t, func(context.Context) { _ = cmd.Wait() })
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("opa's log:\n%s", tail(log, 8000))
		}
		logFile.Close()
	})
	return "http://" + addr
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix) + "\n"
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return bytes.Clone(b[len(b)-n:])
	}
	return b
}
