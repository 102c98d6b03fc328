package hbone

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParseAuthority parses the :authority of an HBONE CONNECT request: an IP
// literal and a port, "10.1.0.9:8080" or "[fd00::9]:8080". Host names,
// IPv6 zones, IPv4-mapped IPv6 addresses (which would let a request slip
// past rules written for the IPv4 form), unspecified addresses (0.0.0.0
// dials the local host), multicast addresses, and ports outside 1-65535 or
// with leading zeros are refused with an error wrapping ErrBadRequest.
//
// ParseAuthority checks syntax only: whether the address belongs to a
// workload the server may reach is the handler's decision.
func ParseAuthority(s string) (netip.AddrPort, error) {
	host, port, ok := splitHostPort(s)
	if !ok {
		return netip.AddrPort{}, authorityError(s, "want ip:port, with IPv6 in brackets")
	}
	addr, err := parseAuthorityAddr(host, strings.HasPrefix(s, "["))
	if err != nil {
		return netip.AddrPort{}, authorityError(s, err.Error())
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, authorityError(s, err.Error())
	}
	return netip.AddrPortFrom(addr, p), nil
}

// splitHostPort splits "host:port" and "[host]:port"; unlike
// net.SplitHostPort it refuses brackets around IPv4 and a bare IPv6.
func splitHostPort(s string) (host, port string, ok bool) {
	if rest, found := strings.CutPrefix(s, "["); found {
		host, port, ok = strings.Cut(rest, "]:")
		return host, port, ok && strings.Contains(host, ":")
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.IndexByte(s[:i], ':') >= 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func parseAuthorityAddr(host string, bracketed bool) (netip.Addr, error) {
	addr, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("host %q is not an IP literal", host)
	case addr.Zone() != "":
		return netip.Addr{}, fmt.Errorf("IPv6 zone %q not allowed", addr.Zone())
	case addr.Is4In6():
		return netip.Addr{}, fmt.Errorf("IPv4-mapped address %s: use the IPv4 form", addr)
	case addr.IsUnspecified(), addr.IsMulticast():
		return netip.Addr{}, fmt.Errorf("address %s cannot be dialed", addr)
	case addr.Is6() != bracketed:
		return netip.Addr{}, fmt.Errorf("IPv6 (and only IPv6) goes in brackets")
	}
	return addr, nil
}

// parsePort accepts 1-65535 in canonical decimal (no sign, no leading zero).
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || s[0] == '0' || s[0] == '+' || s[0] == '-' {
		return 0, fmt.Errorf("port %q not in 1-65535", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q not in 1-65535", s)
	}
	return uint16(n), nil
}

func authorityError(s, why string) error {
	return fmt.Errorf("%w: authority %q: %s", ErrBadRequest, s, why)
}
