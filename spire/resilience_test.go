package spire_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// Rotation: with a short X.509 TTL the agent renews the SVIDs; the next
// handshake presents the new ones, and a connection opened before keeps
// working, even after the SVIDs it was opened with have expired.
func TestRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("waits about 25s for short-lived SVIDs to rotate and expire; -short skips it")
	}
	t.Parallel()
	reg := prometheus.NewRegistry()
	srv := harness.NewServer(t, harness.ServerConfig{})
	n := newNode(t, srv, srv.NewAgent(t, harness.AgentConfig{}), spire.StoreConfig{Metrics: spire.NewMetrics(reg)})
	const ttl = 20 * time.Second
	shortTTL := func(r *spire.Registration) { r.X509SVIDTTL = ttl }
	web, db := n.register(t, "demo", "web", shortTTL), n.register(t, "demo", "db", shortTTL)
	web0, db0 := n.add(t, web), n.add(t, db)
	if life := web0.Certificates[0].NotAfter.Sub(time.Now()); life > ttl+time.Second {
		t.Fatalf("web's SVID lives %s, want at most the entry's %s", life, ttl)
	}
	dbAddr := serveEcho(t, n.store, db.ID, tlsconfig.AuthorizeID(web.ID))
	webAddr := serveEcho(t, n.store, web.ID, tlsconfig.AuthorizeID(db.ID))
	before, err := dial(n.store, web.ID, db.ID, dbAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	eventually(t, ttl+10*time.Second, "both SVIDs to rotate", func() bool {
		w, werr := n.store.SVID(web.ID)
		d, derr := n.store.SVID(db.ID)
		return werr == nil && derr == nil && w != web0 && d != db0
	})
	web1, _ := n.store.SVID(web.ID)
	db1, _ := n.store.SVID(db.ID)
	for _, tc := range []struct {
		name     string
		from, to spiffeid.ID
		addr     string
	}{
		{"web -> db", web.ID, db.ID, dbAddr},
		{"db -> web", db.ID, web.ID, webAddr},
	} {
		conn, err := dial(n.store, tc.from, tc.to, tc.addr)
		if err != nil {
			t.Fatalf("%s after rotation: %v", tc.name, err)
		}
		peer := conn.ConnectionState().PeerCertificates[0]
		want, _ := n.store.SVID(tc.to)
		if !peer.Equal(want.Certificates[0]) {
			t.Errorf("%s: the peer presented an old certificate (serial %s)", tc.name, peer.SerialNumber)
		}
		conn.Close()
	}
	if web1.Certificates[0].Equal(web0.Certificates[0]) || db1.Certificates[0].Equal(db0.Certificates[0]) {
		t.Fatal("rotation kept the same certificates")
	}

	time.Sleep(time.Until(web0.Certificates[0].NotAfter.Add(time.Second)))
	if err := echo(before, "still open after the old SVIDs expired"); err != nil {
		t.Errorf("the connection opened before rotation broke: %v", err)
	}
	if got := counter(t, reg, "regomesh_spire_svid_rotations_total", nil); got < 2 {
		t.Errorf("regomesh_spire_svid_rotations_total = %v, want at least 2", got)
	}
}

// The agent goes away mid-test, killed (its socket file stays, stale) or
// stopped (its socket vanishes): the store keeps serving the cached SVIDs
// (new handshakes included), reports the broken streams, and recovers once
// the agent is back.
func TestAgentRestart(t *testing.T) {
	t.Parallel()
	srv := harness.NewServer(t, harness.ServerConfig{})
	for _, tc := range []struct {
		name         string
		stop         func(*harness.Agent)
		socketVanish bool
	}{
		{"killed", (*harness.Agent).Kill, false},
		{"stopped", (*harness.Agent).Stop, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			n := newNode(t, srv, srv.NewAgent(t, harness.AgentConfig{Name: tc.name}), spire.StoreConfig{Metrics: spire.NewMetrics(reg)})
			web, db := n.register(t, "demo", "web"), n.register(t, "demo", "db")
			web0, _ := n.add(t, web), n.add(t, db)
			waitReady(t, n.store)
			addr := serveEcho(t, n.store, db.ID, tlsconfig.AuthorizeID(web.ID))

			tc.stop(n.agent)
			if _, err := os.Stat(n.agent.AdminSocket()); os.IsNotExist(err) != tc.socketVanish {
				t.Fatalf("admin socket after the agent went away: %v, want vanished=%v", err, tc.socketVanish)
			}
			servesCachedSVIDs(t, n, web0, web.ID, db.ID, addr)

			restarted := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := n.agent.Start(ctx); err != nil {
				t.Fatal(err)
			}
			recovers(t, n, restarted, web0, web.ID, db.ID, addr)
			for _, stream := range []string{"x509_svids", "x509_bundles"} {
				if got := counter(t, reg, "regomesh_spire_stream_reconnects_total", map[string]string{"stream": stream}); got < 1 {
					t.Errorf("regomesh_spire_stream_reconnects_total{stream=%q} = %v, want at least 1", stream, got)
				}
			}
		})
	}
}

// servesCachedSVIDs checks the store while its agent is down: streams
// reported broken, cached SVIDs served, handshakes possible.
func servesCachedSVIDs(t *testing.T, n *node, web0 *x509svid.SVID, web, db spiffeid.ID, addr string) {
	t.Helper()
	eventually(t, 10*time.Second, "every stream to notice the agent is gone", func() bool {
		h := n.store.Health()
		return !h.Bundles.Connected && !h.Workloads[0].Stream.Connected && !h.Workloads[1].Stream.Connected
	})
	h := n.store.Health()
	wantErr(t, h.Workloads[0].Stream.LastError, spire.ErrAgentUnavailable, "admin_socket_path", n.agent.AdminSocket())
	if err := h.Err(); err != nil {
		t.Errorf("health while cached SVIDs are valid: %v", err)
	}
	if got, err := n.store.SVID(web); err != nil || got != web0 {
		t.Fatalf("cached SVID not served while the agent is down: %v, %v", got, err)
	}
	conn, err := dial(n.store, web, db, addr)
	if err != nil {
		t.Fatalf("handshake with cached SVIDs while the agent is down: %v", err)
	}
	conn.Close()
}

// recovers checks that every stream reopens after the agent restarted, and
// the store takes the new SVIDs the restarted agent mints.
func recovers(t *testing.T, n *node, restarted time.Time, web0 *x509svid.SVID, web, db spiffeid.ID, addr string) {
	t.Helper()
	eventually(t, 15*time.Second, "every stream to reconnect", func() bool {
		h := n.store.Health()
		for _, s := range []spire.StreamHealth{h.Bundles, h.Workloads[0].Stream, h.Workloads[1].Stream} {
			if !s.Connected || s.Since.Before(restarted) {
				return false
			}
		}
		return true
	})
	eventually(t, 10*time.Second, "web's SVID from the restarted agent", func() bool {
		got, err := n.store.SVID(web)
		return err == nil && got != web0
	})
	conn, err := dial(n.store, web, db, addr)
	if err != nil {
		t.Fatalf("handshake after the agent came back: %v", err)
	}
	conn.Close()
}

// A caller the agent does not list in authorized_delegates is refused,
// with an error that says so.
func TestUnauthorizedCaller(t *testing.T) {
	t.Parallel()
	srv := harness.NewServer(t, harness.ServerConfig{})
	for _, tc := range []struct {
		name      string
		cfg       harness.AgentConfig
		agentSays string
	}{
		{
			name:      "caller's ID not in authorized_delegates",
			cfg:       harness.AgentConfig{AuthorizedDelegates: []spiffeid.ID{spiffeid.RequireFromString("spiffe://regomesh.test/ns/regomesh-system/sa/someone-else")}},
			agentSays: "caller not configured as an authorized delegate",
		},
		{
			name:      "caller has no entry",
			cfg:       harness.AgentConfig{DelegateSelectors: []spire.Selector{{Type: "unix", Value: "uid:4242"}}},
			agentSays: "no identity issued",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, srv, srv.NewAgent(t, tc.cfg), spire.StoreConfig{})
			web := n.register(t, "demo", "web")
			if err := n.store.Add(web); err != nil {
				t.Fatal(err)
			}
			eventually(t, 15*time.Second, "the agent's verdict", func() bool {
				_, err := n.store.SVID(web.ID)
				return strings.Contains(err.Error(), tc.agentSays)
			})
			_, err := n.store.SVID(web.ID)
			t.Logf("SVID: %v", err)
			wantErr(t, err, spire.ErrNoSVID, "authorized_delegates")
			wantErr(t, err, spire.ErrNotAuthorized, n.agent.AdminSocket())
			wantErr(t, n.store.Health().Err(), spire.ErrNotAuthorized, "no bundles")

			stream, err := n.client.SubscribeToX509SVIDs(context.Background(), web)
			if err == nil {
				_, err = stream.Recv()
			}
			wantErr(t, err, spire.ErrNotAuthorized, "authorized_delegates", tc.agentSays)
		})
	}
}

// counter reads a counter's value from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}
