// Package ztunnel is the node proxy: it captures the TCP of the node's
// enrolled workloads, carries it through HBONE tunnels authenticated with
// the workloads' own SPIFFE SVIDs, and enforces L4 policy on the way in.
//
// Files split by concern, as in istio/ztunnel: outbound.go and inbound.go
// take a connection through its phases, route.go picks where an outbound
// connection goes, conn.go holds one connection's facts and turns them
// into its one report, which metrics.go and accesslog.go give with
// Istio's names, errors.go says why a connection was refused, admin.go
// serves the loopback admin endpoints.
package ztunnel
