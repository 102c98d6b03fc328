// Package ztunnel is the node proxy: it captures the TCP of the node's
// enrolled workloads, carries it through HBONE tunnels authenticated with
// the workloads' own SPIFFE SVIDs, and enforces L4 policy on the way in.
//
// Files split by concern, as in istio/ztunnel: route.go picks where an
// outbound connection goes, input.go builds the policy input of an inbound
// one, metrics.go and accesslog.go report each connection with Istio's
// names, admin.go serves the loopback admin endpoints.
package ztunnel
