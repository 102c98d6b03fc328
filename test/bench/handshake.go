package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/ztunnel/capture"
)

// handshakes are new mutual-TLS connections per second, each a full
// TLS 1.3 handshake with certificates on both sides (no resumption),
// carrying one 1-byte echo.
type handshakes struct {
	// regomesh: HBONE connections from the client pod to node-2's
	// ztunnel, as node-1's ztunnel opens them.
	regomesh float64
	// haproxy: connections through the haproxy pair with TLS session
	// reuse off.
	haproxy float64
	// failed counts the connections that failed on each path.
	failedRegomesh, failedHAProxy int
}

func measureHandshakes(ctx context.Context, b *bed, pair *haproxyPair, d time.Duration) (handshakes, error) {
	var h handshakes
	var err error
	step(pathRegomesh, "new mTLS connections")
	if h.regomesh, h.failedRegomesh, err = hboneConnRate(ctx, b, d); err != nil {
		return h, err
	}
	step(pathHAProxy, "new mTLS connections (TLS session reuse off)")
	fresh := path{name: pathHAProxy, client: b.pod("plain-client"), addr: pair.FreshAddr(), server: b.servers["plain-server"]}
	h.haproxy, h.failedHAProxy, err = connRate(ctx, fresh, d)
	return h, err
}

// hboneConnRate opens HBONE connections for d the way node-1's ztunnel
// opens one for the client pod, but never reuses one: each op dials the
// server pod's HBONE port (15008, where node-2's ztunnel listens inside
// the pod) from the client pod's namespace with ztunnel's socket mark,
// runs the mutual TLS 1.3 handshake presenting the client pod's SVID
// from SPIRE, exchanges the HTTP/2 preface and SETTINGS, opens one
// CONNECT tunnel to the benchmark server (node-2's ztunnel decides the
// policy and dials the server), echoes one byte and closes. It returns
// the completed ops per second.
func hboneConnRate(ctx context.Context, b *bed, d time.Duration) (rate float64, failed int, err error) {
	t, err := newTunneler(ctx, b)
	if err != nil {
		return 0, 0, err
	}
	defer t.ns.Close()
	var done int
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		if err := t.once(ctx); err != nil {
			if failed++; failed > 100 {
				return 0, failed, fmt.Errorf("bench: %s: more than 100 failed mTLS connections, last: %w", pathRegomesh, err)
			}
			continue
		}
		done++
	}
	elapsed := time.Since(start)
	if n := t.dials.Load(); n != int64(done+failed) {
		return 0, failed, fmt.Errorf("bench: %s: %d TCP connections for %d tunnels: a tunnel did not get a connection of its own", pathRegomesh, n, done+failed)
	}
	return float64(done) / elapsed.Seconds(), failed, ctx.Err()
}

// tunneler opens one-tunnel HBONE connections as the client pod.
type tunneler struct {
	req    hbone.Request
	bundle x509bundle.Source
	ns     *capture.Netns
	dials  atomic.Int64 // TCP connections opened
}

func newTunneler(ctx context.Context, b *bed) (*tunneler, error) {
	client, _ := b.mesh.Spec("client")
	server, _ := b.mesh.Spec("server")
	bundle, err := agentBundles(ctx, b.mesh.Agent(client.Node).AdminSocket())
	if err != nil {
		return nil, err
	}
	ns, err := capture.OpenNetns(b.pod("client").Path)
	if err != nil {
		return nil, err
	}
	serverIP := b.pod("server").IP
	return &tunneler{
		req: hbone.Request{
			Source:    podSVID{b.mesh, client},
			Peer:      b.mesh.Identity(server),
			Addr:      netip.AddrPortFrom(serverIP, capture.HBONEPort),
			Authority: netip.AddrPortFrom(serverIP, appPort),
		},
		bundle: bundle,
		ns:     ns,
	}, nil
}

// once opens a Pool of its own (so a connection of its own), one tunnel
// on it, echoes one byte and closes both.
func (t *tunneler) once(ctx context.Context) error {
	pool, err := hbone.NewPool(hbone.PoolConfig{Bundle: t.bundle, DialContext: t.dial})
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := pool.Dial(ctx, t.req)
	if err != nil {
		return err
	}
	defer s.Close()
	return ping(s)
}

// dial connects from the client pod with ztunnel's mark, so the pod's
// capture lets it through, as node-1's ztunnel dials.
func (t *tunneler) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	t.dials.Add(1)
	return t.ns.Dial(ctx, addr)
}

// podSVID is a pod's current SVID, as its ztunnel holds it.
type podSVID struct {
	mesh *localmesh.Mesh
	pod  localmesh.PodSpec
}

func (s podSVID) GetX509SVID() (*x509svid.SVID, error) { return s.mesh.SVID(s.pod) }

// agentBundles fetches the trust bundles from a node's SPIRE agent over
// the Delegated Identity API, as that node's ztunnel receives them.
func agentBundles(ctx context.Context, adminSocket string) (*x509bundle.Set, error) {
	client, err := spire.Dial(adminSocket)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := client.SubscribeToX509Bundles(ctx)
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}
