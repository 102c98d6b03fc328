// Package adminaddr checks the address a binary's admin endpoint binds,
// the same way for ztunnel, the waypoint and the controller.
package adminaddr

import (
	"fmt"
	"net"
	"net/netip"
)

// CheckLoopback accepts host:port whose host is a loopback address or
// "localhost" (an empty host would listen on every address). Otherwise the
// error says why the endpoint stays on loopback (what, e.g. "changes the
// log level and serves pprof") and how to bind it elsewhere on purpose.
func CheckLoopback(addr, what string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("the admin endpoint %s, so it binds a loopback address only (127.0.0.1, ::1 or localhost); pass --admin-expose to bind it elsewhere on purpose", what)
}
