// Package capture sends an enrolled pod's TCP through ztunnel without
// touching the pod or the node's root namespace: nftables rules inside the
// pod's network namespace redirect its outbound TCP to ztunnel's listener on
// 15001 and inbound TCP (except HBONE on 15008) to 15006, and ztunnel opens
// those listeners inside the same namespace (setns on a locked OS thread).
// ztunnel's own sockets carry mark 1337 and are left alone, as is loopback.
package capture

// Ports and mark of in-pod capture (ARCHITECTURE.md, "Binaries": ports).
const (
	OutboundPort  = 15001 // the pod's outbound TCP, original destination in SO_ORIGINAL_DST
	PlaintextPort = 15006 // inbound TCP from outside the mesh
	HBONEPort     = 15008 // inbound HBONE tunnels
	Mark          = 1337  // ztunnel's own sockets: never captured
)
