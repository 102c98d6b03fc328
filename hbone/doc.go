// Package hbone implements HBONE, the tunnel protocol of regomesh's
// ztunnel and waypoint: TCP carried as HTTP/2 CONNECT streams inside
// mutual TLS 1.3 (port 15008), both ends authenticated with SPIFFE
// X.509-SVIDs.
//
// # Server side
//
// A Server verifies each client's SVID against the trust bundles, reads
// each CONNECT request (:authority = destination ip:port, Forwarded: for=
// the original client, traceparent) and hands a Tunnel to the Handler,
// which answers with Accept (200) or Reject (401 denied, 503 upstream
// failed); malformed requests get 400 before the Handler sees them.
// StatusFor is the one mapping from errors to statuses, and the client
// reads statuses back into the same sentinel errors (errors.go).
//
// A hostile client is bounded (Limits, NodeLimits): handshakes in
// progress, connections per identity and in all, receive-window memory,
// and handlers in flight per connection; a rapid reset gets GOAWAY
// ENHANCE_YOUR_CALM. ConnConfig.OnRefuse hears of every refusal.
//
//	srv, err := hbone.NewServer(hbone.ServerConfig{SVID: svids, Bundle: bundles, Handler: h})
//	go srv.Serve(listener)
//
// # Client side
//
// A Pool opens tunnels with the source workload's SVID (Request.Source):
// never another identity, never plaintext, and no SVID means no tunnel
// (ErrNoSVID). Connections are shared per (source identity, destination
// identity, destination address), carry at most 100 streams each, are
// released when idle, and are probed with HTTP/2 PING when quiet so a
// peer that vanished leaves the pool instead of failing the next tunnel.
//
//	s, err := pool.Dial(ctx, hbone.Request{Source: src, Peer: dstID, Addr: hboneAddr, Authority: dst})
//
// # Bytes
//
// A Stream is a net.Conn with CloseWrite. Relay copies between a Stream
// and a TCP connection in both directions with pooled buffers, carries
// half-closes across (EOF on one side becomes CloseWrite on the other),
// and reports the byte counts for metrics. StartRelay does the same
// without a goroutine waiting for it, and an idle relay holds none: a
// Handler can Hijack its tunnel, start the relay and return. Flow control
// is sized for bulk transfer as Istio's ztunnel is: 4 MiB stream and
// 16 MiB connection windows, frames up to 1 MiB.
//
// The HTTP/2 framing is this package's own, on x/net's Framer and HPACK:
// HBONE needs a small part of HTTP/2, and needs each stream direction to
// close separately, which x/net's http.Handler-based server cannot do.
package hbone
