package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Ports of the haproxy L7 chain, the waypoint path's baseline: the
// client pod's haproxy (19100, on loopback) wraps the connection in TLS to
// the waypoint pod's haproxy (8444), which parses HTTP, applies a rule and
// sends each request over TLS to the server pod's haproxy (8445), which
// unwraps it to the HTTP server. Three proxies on the hops of the
// waypoint path (ztunnel, waypoint, ztunnel), TLS between each.
const (
	haproxyL7Port       = 19100
	haproxyWaypointPort = 8444
	haproxyL7UnwrapPort = 8445
)

// haproxyL7Global is haproxyGlobal with two threads: the waypoint uses
// both cores, so the L7 baseline may too.
const haproxyL7Global = `global
	maxconn 4000
	nbthread 2
defaults
	mode tcp
	timeout connect 5s
	timeout client 2m
	timeout server 2m
	timeout http-keep-alive 2m
`

// startHAProxyL7 starts the chain in the plain pods; Close stops it.
func startHAProxyL7(ctx context.Context, b *bed) (*haproxyPair, error) {
	if err := ensureTools(ctx); err != nil {
		return nil, err
	}
	p := &haproxyPair{}
	if err := p.startL7(ctx, b); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *haproxyPair) startL7(ctx context.Context, b *bed) error {
	var err error
	if p.dir, err = os.MkdirTemp("", "rm-bench-haproxy-l7-"); err != nil {
		return err
	}
	if err := writeCerts(p.dir); err != nil {
		return err
	}
	waypointIP, serverIP := b.pod("plain-waypoint").IP.String(), b.pod("plain-server").IP.String()
	tls := func(kind string) string {
		return fmt.Sprintf("ssl crt %s ca-file %s verify required", filepath.Join(p.dir, kind+".pem"), filepath.Join(p.dir, "ca.pem"))
	}
	origin := tls("client") + " sni str(server.bench) " + tlsOptions
	configs := []struct{ pod, conf string }{
		{"plain-server", haproxyL7Global + fmt.Sprintf(`frontend unwrap
	bind %s:%d %s %s
	default_backend app
backend app
	server app 127.0.0.1:%d
`, serverIP, haproxyL7UnwrapPort, tls("server"), tlsOptions, httpPort)},
		{"plain-waypoint", haproxyL7Global + fmt.Sprintf(`frontend l7
	mode http
	bind %s:%d %s %s
	http-request deny deny_status 403 if { path_beg /admin }
	default_backend next
backend next
	mode http
	http-reuse always
	server peer %s:%d %s
`, waypointIP, haproxyWaypointPort, tls("server"), tlsOptions, serverIP, haproxyL7UnwrapPort, origin)},
		{"plain-client", haproxyL7Global + fmt.Sprintf(`frontend wrap
	bind 127.0.0.1:%d
	default_backend waypoint
backend waypoint
	server waypoint %s:%d %s
`, haproxyL7Port, waypointIP, haproxyWaypointPort, origin)},
	}
	for _, c := range configs {
		if err := p.spawn(ctx, b.pod(c.pod), c.conf); err != nil {
			return err
		}
	}
	for _, addr := range []string{
		net.JoinHostPort(serverIP, fmt.Sprint(haproxyL7UnwrapPort)), net.JoinHostPort(waypointIP, fmt.Sprint(haproxyWaypointPort)),
		fmt.Sprintf("127.0.0.1:%d", haproxyL7Port),
	} {
		if err := waitListening(b.pod("plain-client"), addr); err != nil {
			return fmt.Errorf("%w\n%s", err, p.logs())
		}
	}
	out, _ := exec.CommandContext(ctx, "haproxy", "-v").Output()
	p.Version, _, _ = strings.Cut(string(out), "\n")
	p.Version, _, _ = strings.Cut(p.Version, " - ")
	return nil
}
