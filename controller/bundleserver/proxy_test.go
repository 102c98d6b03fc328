package bundleserver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// TestProxyDownload: the proxies' own downloader (opabundles, with the
// controller's bundle as ztunnel and the waypoint configure it by
// default) reads the server's signed bundles over mutual TLS with the
// proxy's SVID, verifies them, and decides with them; a new revision
// arrives by long poll; a waypoint reads its own bundle; a server that is
// not the controller named is refused; and an unsigned bundle is refused
// by a proxy holding the verification key.
func TestProxyDownload(t *testing.T) {
	key := newKey(t, "RS256")
	b := newBed(t, bundleserver.Config{Signer: signer(t, key, "RS256")})
	v1 := translated(t, allowFrom("front"))
	wp := translated(t, allowFrom("edge"))
	b.srv.Update(&controller.Update{Bundle: v1, WaypointBundles: map[string]*controller.Bundle{"shop/wp-a": wp}})
	controllerID := spiffeid.RequireFromPath(b.ca.TD, controllerPath)

	// start downloads resource from srv as the proxy client would.
	start := func(t *testing.T, srv *bed, client, resource string, server spiffeid.ID, bundle opabundles.ControllerBundle) (*opabundles.Set, *policy.Engine) {
		t.Helper()
		bundle.URL, bundle.Resource = "https://"+srv.addr, resource
		cfg, err := bundle.Config()
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		engine, err := policy.NewEngine(policy.Config{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		set, err := opabundles.New(engine, cfg, opabundles.Options{Logger: log, SVID: &opabundles.SVIDCredentials{
			SVID: srv.ca.SVID(t, client), Bundle: srv.ca.Bundle(), Server: server,
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(set.Stop)
		return set, engine
	}
	signed := opabundles.ControllerBundle{VerificationKey: string(key.public)}

	t.Run("ztunnel", func(t *testing.T) {
		set, engine := start(t, b, ztunnelPath, wire.MeshBundle, controllerID, signed)
		waitProxy(t, set, engine, "mesh", v1.Revision, map[string]bool{"front": true, "back": false})
		v2 := translated(t, allowFrom("back"))
		b.srv.Update(&controller.Update{Bundle: v2, WaypointBundles: map[string]*controller.Bundle{"shop/wp-a": wp}})
		waitProxy(t, set, engine, "mesh", v2.Revision, map[string]bool{"front": false, "back": true})
	})

	t.Run("waypoint", func(t *testing.T) {
		set, engine := start(t, b, "/ns/shop/sa/wp-a", wire.WaypointBundle("shop/wp-a"), controllerID, signed)
		waitProxy(t, set, engine, "waypoint/shop/wp-a", wp.Revision, map[string]bool{"edge": true, "front": false})
	})

	t.Run("not the controller", func(t *testing.T) {
		set, engine := start(t, b, ztunnelPath, wire.MeshBundle, spiffeid.RequireFromPath(b.ca.TD, "/ns/other/sa/bundles"), signed)
		waitNotReady(t, set, "unexpected ID")
		if d := decideFrom(t, engine, "front"); d.Allow {
			t.Errorf("allowed without a bundle from the controller: %+v", d)
		}
	})

	// A controller signing with ES256 (--bundle-signing-algorithm) is
	// verified by a proxy told the key's algorithm
	// (--verification-key-algorithm), and refused by one that expects
	// the default, RS256.
	t.Run("ES256", func(t *testing.T) {
		ec := newKey(t, "ES256")
		es := newBed(t, bundleserver.Config{Signer: signer(t, ec, "ES256")})
		es.srv.Update(&controller.Update{Bundle: v1})
		esController := spiffeid.RequireFromPath(es.ca.TD, controllerPath)
		set, engine := start(t, es, ztunnelPath, wire.MeshBundle, esController,
			opabundles.ControllerBundle{VerificationKey: string(ec.public), VerificationAlgorithm: "ES256"})
		waitProxy(t, set, engine, "mesh", v1.Revision, map[string]bool{"front": true, "back": false})
		wrong, _ := start(t, es, ztunnelPath, wire.MeshBundle, esController, opabundles.ControllerBundle{VerificationKey: string(ec.public)})
		waitNotReady(t, wrong, "signature")
	})

	t.Run("unsigned", func(t *testing.T) {
		unsigned := newBed(t, bundleserver.Config{Unsigned: true})
		unsigned.srv.Update(&controller.Update{Bundle: v1})
		set, _ := start(t, unsigned, ztunnelPath, wire.MeshBundle, spiffeid.RequireFromPath(unsigned.ca.TD, controllerPath), signed)
		waitNotReady(t, set, ".signatures.json")
	})
}

// waitProxy waits until bundle is at revision in engine, and engine
// allows sources of exactly the namespaces allowed says.
func waitProxy(t *testing.T, set *opabundles.Set, engine *policy.Engine, bundle, revision string, allowed map[string]bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for set.Ready() != nil || engine.Revisions()[bundle] != revision {
		if time.Now().After(deadline) {
			t.Fatalf("bundle %s never reached revision %s: revisions %v, ready: %v", bundle, revision, engine.Revisions(), set.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for ns, want := range allowed {
		if d := decideFrom(t, engine, ns); d.Allow != want {
			t.Errorf("revision %s: from namespace %s allowed %t (%s), want %t", revision, ns, d.Allow, d.Reason, want)
		}
	}
}

// waitNotReady waits until the set's readiness error mentions why.
func waitNotReady(t *testing.T, set *opabundles.Set, why string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := set.Ready()
		if err == nil {
			t.Fatalf("ready, want not ready because of %q", why)
		}
		if errors.Is(err, opabundles.ErrNotReady) && strings.Contains(err.Error(), why) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready because %v, want %q", err, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// decideFrom decides a connection from namespace ns to the shop
// namespace's web workload.
func decideFrom(t *testing.T, engine *policy.Engine, ns string) policy.Decision {
	t.Helper()
	d, err := engine.Decide(context.Background(), policy.Input{
		Layer:       policy.L4,
		Source:      policy.Source{Principal: fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/x", ns), Namespace: ns, IP: "10.0.0.1", Port: 40000},
		Destination: policy.Destination{IP: "10.1.0.3", Port: 8080, Namespace: "shop", Workload: "web"},
		Connection:  policy.Connection{MTLS: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
