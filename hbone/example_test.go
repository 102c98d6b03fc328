package hbone_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/regomesh/regomesh/hbone"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Sources of identity, as cmd/ wires them from SPIRE.
var (
	nodeWorkloadSVID x509svid.Source   // the destination workload's SVID
	sourceSVID       x509svid.Source   // the source workload's SVID
	bundles          x509bundle.Source // trust bundles, federated ones included
)

// An inbound HBONE listener: authorize each tunnel, dial the destination,
// relay, and report the bytes.
func ExampleServer() {
	authorize := func(ctx context.Context, t *hbone.Tunnel) error {
		if t.Peer.TrustDomain().Name() != "td" {
			return fmt.Errorf("%w: %s is not in trust domain td", hbone.ErrDenied, t.Peer)
		}
		return nil
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		SVID:   nodeWorkloadSVID,
		Bundle: bundles,
		Handler: hbone.HandlerFunc(func(ctx context.Context, t *hbone.Tunnel) {
			if err := authorize(ctx, t); err != nil {
				t.Reject(err) // 401
				return
			}
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", t.Authority.String())
			if err != nil {
				t.Reject(errors.Join(hbone.ErrUpstream, err)) // 503
				return
			}
			s, err := t.Accept() // 200
			if err != nil {
				up.Close()
				return
			}
			counts, err := hbone.Relay(ctx, s, up)
			log.Printf("%s -> %s: %d bytes in, %d out, %v", t.Peer, t.Authority, counts.FromClient, counts.FromServer, err)
		}),
	})
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", ":15008")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(l))
}

// An outbound tunnel with the source workload's SVID.
func ExamplePool_Dial() {
	pool, err := hbone.NewPool(hbone.PoolConfig{Bundle: bundles})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	s, err := pool.Dial(context.Background(), hbone.Request{
		Source:    sourceSVID,
		Peer:      spiffeid.RequireFromString("spiffe://td/ns/b/sa/web"),
		Addr:      netip.MustParseAddrPort("10.1.0.9:15008"),
		Authority: netip.MustParseAddrPort("10.1.0.9:8080"),
		Forwarded: netip.MustParseAddrPort("10.1.0.5:40122"),
	})
	switch {
	case errors.Is(err, hbone.ErrNoSVID):
		log.Fatal("no SVID for the source workload: refusing to send plaintext")
	case errors.Is(err, hbone.ErrDenied):
		log.Fatal("the destination's policy denied the connection")
	case err != nil:
		log.Fatal(err)
	}
	defer s.Close()
	fmt.Fprintf(s, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
}
