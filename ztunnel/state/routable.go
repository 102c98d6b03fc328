package state

import "net/netip"

// NotRoutable says why ip cannot be a workload's address ("a loopback
// address", "the unspecified address", "a link-local address" or "a
// multicast address"), or "" when it can. As a workload's IP such an
// address would pass ztunnel's pod-address check for traffic that is not
// the pod's (127.0.0.1 is every pod's). The local config, the state
// stream and the controller refuse the same addresses.
func NotRoutable(ip netip.Addr) string {
	switch ip = ip.Unmap(); {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsUnspecified():
		return "the unspecified address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case ip.IsMulticast():
		return "a multicast address"
	}
	return ""
}
