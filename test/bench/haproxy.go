package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
)

// Ports of the haproxy pair: the client side listens on loopback in the
// plain client pod; the server side terminates TLS on the plain server
// pod's address and forwards to the benchmark server on its loopback.
// The client side's second port never resumes a TLS session, so every
// connection through it is a full handshake with both certificates.
const (
	haproxyLocalPort = 19000
	haproxyFreshPort = 19002
	haproxyTLSPort   = 8443
)

// haproxyPair is the TLS 1.3 baseline: two haproxy processes, each in
// its pod's network namespace, doing the encryption work our ztunnel
// pair does (mutual TLS 1.3, ECDSA P-256, AES-128-GCM).
type haproxyPair struct {
	dir     string
	procs   []*exec.Cmd
	Version string
}

func startHAProxyPair(ctx context.Context, b *bed) (*haproxyPair, error) {
	if err := ensureTools(ctx); err != nil {
		return nil, err
	}
	p := &haproxyPair{}
	if err := p.start(ctx, b); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *haproxyPair) start(ctx context.Context, b *bed) error {
	var err error
	if p.dir, err = os.MkdirTemp("", "rm-bench-haproxy-"); err != nil {
		return err
	}
	if err := writeCerts(p.dir); err != nil {
		return err
	}
	serverIP := b.pod("plain-server").IP.String()
	configs := []struct{ pod, conf string }{
		{"plain-server", serverConfig(p.dir, serverIP)},
		{"plain-client", clientConfig(p.dir, serverIP)},
	}
	for _, c := range configs {
		if err := p.spawn(ctx, b.pod(c.pod), c.conf); err != nil {
			return err
		}
	}
	for _, addr := range []string{net.JoinHostPort(serverIP, fmt.Sprint(haproxyTLSPort)), p.Addr(), p.FreshAddr()} {
		if err := waitListening(b.pod("plain-client"), addr); err != nil {
			return fmt.Errorf("%w\n%s", err, p.logs())
		}
	}
	out, _ := exec.CommandContext(ctx, "haproxy", "-v").Output()
	p.Version, _, _ = strings.Cut(string(out), "\n")
	p.Version, _, _ = strings.Cut(p.Version, " - ")
	return nil
}

// Addr is where a client in the plain client pod connects.
func (p *haproxyPair) Addr() string { return fmt.Sprintf("127.0.0.1:%d", haproxyLocalPort) }

// FreshAddr is Addr with TLS session reuse off: haproxy, by default,
// resumes its last session with the server side (a TLS 1.3 PSK handshake
// without certificates), which regomesh's pool never does.
func (p *haproxyPair) FreshAddr() string { return fmt.Sprintf("127.0.0.1:%d", haproxyFreshPort) }

// spawn checks conf and runs haproxy in the foreground inside pod's netns.
func (p *haproxyPair) spawn(ctx context.Context, pod *netbed.Pod, conf string) error {
	path := filepath.Join(p.dir, pod.Name+".cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		return fmt.Errorf("bench: haproxy config %s: %w\n%s", path, err, out)
	}
	log, err := os.Create(filepath.Join(p.dir, pod.Name+".log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := pod.Start(cmd); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	p.procs = append(p.procs, cmd)
	return nil
}

// logs are the tails of both haproxy logs, for an error.
func (p *haproxyPair) logs() string {
	var b strings.Builder
	for _, pod := range []string{"plain-server", "plain-client"} {
		out, _ := os.ReadFile(filepath.Join(p.dir, pod+".log"))
		fmt.Fprintf(&b, "haproxy in %s:\n%s\n", pod, tail(out))
	}
	return b.String()
}

// Close kills both haproxy processes and removes their files.
func (p *haproxyPair) Close() error {
	for _, cmd := range p.procs {
		cmd.Process.Kill()
		cmd.Wait()
	}
	p.procs = nil
	if p.dir != "" {
		return os.RemoveAll(p.dir)
	}
	return nil
}

// TLS on both sides: TLS 1.3 only, AES-128-GCM, client certificates (ECDSA
// P-256, see writeCerts); the key exchange group is left to OpenSSL. It
// only changes the handshake, so only the new-connection figures, whose
// note names the groups.
const tlsOptions = "ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256"

const haproxyGlobal = `global
	maxconn 4000
	nbthread 1
defaults
	mode tcp
	timeout connect 5s
	timeout client 2m
	timeout server 2m
`

func serverConfig(dir, ip string) string {
	return haproxyGlobal + fmt.Sprintf(`frontend tls
	bind %s:%d ssl crt %s ca-file %s verify required %s
	default_backend app
backend app
	server app 127.0.0.1:%d
`, ip, haproxyTLSPort, filepath.Join(dir, "server.pem"), filepath.Join(dir, "ca.pem"), tlsOptions, appPort)
}

func clientConfig(dir, ip string) string {
	return haproxyGlobal + fmt.Sprintf(`frontend local
	bind 127.0.0.1:%d
	default_backend tls
frontend fresh
	bind 127.0.0.1:%d
	default_backend tls-fresh
backend tls
	server peer %[3]s:%[4]d ssl crt %[5]s ca-file %[6]s verify required sni str(server.bench) %[7]s
backend tls-fresh
	server peer %[3]s:%[4]d ssl crt %[5]s ca-file %[6]s verify required sni str(server.bench) no-ssl-reuse %[7]s
`, haproxyLocalPort, haproxyFreshPort, ip, haproxyTLSPort, filepath.Join(dir, "client.pem"), filepath.Join(dir, "ca.pem"), tlsOptions)
}

// waitListening dials addr from pod until it answers.
func waitListening(pod *netbed.Pod, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := localmesh.Dial(pod, addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: haproxy not listening on %s from %s: %w", addr, pod.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ensureTools installs haproxy with apt-get when missing.
func ensureTools(ctx context.Context) error {
	if _, err := exec.LookPath("haproxy"); err == nil {
		return nil
	}
	missing := []string{"haproxy"}
	fmt.Fprintf(os.Stderr, "bench: installing %s with apt-get\n", strings.Join(missing, " "))
	steps := [][]string{{"apt-get", "update"}, append([]string{"apt-get", "install", "-y", "--no-install-recommends"}, missing...)}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("bench: %s failed (install %s yourself: apt-get install %s): %w\n%s",
				strings.Join(args, " "), strings.Join(missing, " "), strings.Join(missing, " "), err, tail(out))
		}
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		return errors.New("bench: haproxy still missing after apt-get install")
	}
	return nil
}

func tail(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}
