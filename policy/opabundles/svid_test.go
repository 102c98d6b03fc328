package opabundles

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/policy"
)

const (
	controllerPath = "/ns/regomesh-system/sa/regomesh-controller"
	ztunnelPath    = "/regomesh/ztunnel/node-a"
)

// rotatingSVID is an x509svid.Source whose SVID the test replaces, as
// the Workload API replaces a proxy's at rotation.
type rotatingSVID struct {
	mu   sync.Mutex
	svid *x509svid.SVID
}

func (r *rotatingSVID) set(s *x509svid.SVID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.svid = s
}

func (r *rotatingSVID) GetX509SVID() (*x509svid.SVID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svid, nil
}

// svidServer is a long-polling bundle server presenting the controller's
// SVID of ca and requiring a client SVID of ca's trust domain.
func svidServer(t *testing.T, ca *testpki.CA) *bundleServer {
	t.Helper()
	cfg := tlsconfig.MTLSServerConfig(ca.SVID(t, controllerPath), ca.Bundle(), tlsconfig.AuthorizeMemberOf(ca.TD))
	return newBundleServer(t, true).startMTLS(t, cfg)
}

// startControllerSet starts a Set downloading b with creds.
func startControllerSet(t *testing.T, b ControllerBundle, creds *SVIDCredentials) *harness {
	t.Helper()
	cfg, err := b.Config()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	engine, err := policy.NewEngine(policy.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics(nil)
	set, err := New(engine, cfg, Options{Metrics: metrics, Logger: log, SVID: creds})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Stop)
	return &harness{set: set, engine: engine, metrics: metrics}
}

// TestSVIDCredentials downloads a signed bundle as the proxies download
// the controller's (ControllerBundle): over mutual TLS with the proxy's
// SVID, from a server that must present the controller's SPIFFE ID. The
// server sees the proxy's SPIFFE ID; a new revision arrives by long poll;
// a server with another SPIFFE ID is never trusted; a proxy whose SVID the
// server refuses becomes ready once its SVID rotates to a good one,
// without a restart.
func TestSVIDCredentials(t *testing.T) {
	ca := testpki.New(t, "td.test")
	keys := newRSAKeys(t)
	srv := svidServer(t, ca)
	srv.publish(denyPort{"ctl", "c1", 1}.tarball(t, &keys, "regomesh"))
	controller := spiffeid.RequireFromPath(ca.TD, controllerPath)
	bundle := ControllerBundle{URL: srv.URL, Resource: "bundles/mesh", VerificationKey: keys.public}

	t.Run("downloads with the SVID", func(t *testing.T) {
		h := startControllerSet(t, bundle, &SVIDCredentials{SVID: ca.SVID(t, ztunnelPath), Bundle: ca.Bundle(), Server: controller})
		waitFor(t, "ready", func() bool { return h.set.Ready() == nil })
		h.wantDecisions(t, map[int]string{1: "ctl/p", 2: ""})
		if got, want := srv.seen()[0].peer, "spiffe://td.test"+ztunnelPath; got != want {
			t.Errorf("the server saw client %q, want %q", got, want)
		}
		srv.publish(denyPort{"ctl", "c2", 2}.tarball(t, &keys, "regomesh"))
		h.waitRevision(t, "mesh", "c2")
		h.wantDecisions(t, map[int]string{1: "", 2: "ctl/p"})
	})

	t.Run("a server with another SPIFFE ID is refused", func(t *testing.T) {
		other := spiffeid.RequireFromPath(ca.TD, "/ns/shop/sa/web")
		h := startControllerSet(t, bundle, &SVIDCredentials{SVID: ca.SVID(t, ztunnelPath), Bundle: ca.Bundle(), Server: other})
		h.waitFailures(t, "mesh", reasonDownload, 1)
		if err := h.set.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "unexpected ID") {
			t.Errorf("Ready() = %v, want ErrNotReady naming the unexpected server ID", err)
		}
		if d := h.decide(t, 3); d.Allow {
			t.Errorf("allowed with no bundle from a trusted server: %+v", d)
		}
	})

	t.Run("a rotated SVID is used at the next handshake", func(t *testing.T) {
		stranger := testpki.New(t, "td.test") // same trust domain name, another CA: the server refuses its SVIDs
		svid := &rotatingSVID{svid: stranger.SVID(t, ztunnelPath)}
		h := startControllerSet(t, bundle, &SVIDCredentials{SVID: svid, Bundle: ca.Bundle(), Server: controller})
		h.waitFailures(t, "mesh", reasonDownload, 1)
		if h.set.Ready() == nil {
			t.Fatal("ready with an SVID the server refuses")
		}
		svid.set(ca.SVID(t, ztunnelPath))
		waitFor(t, "ready after the rotation", func() bool { return h.set.Ready() == nil })
		h.wantDecisions(t, map[int]string{2: "ctl/p"})
	})

	t.Run("an unsigned bundle is refused", func(t *testing.T) {
		unsigned := svidServer(t, ca)
		unsigned.publish(denyPort{"ctl", "u1", 1}.tarball(t, nil, ""))
		b := ControllerBundle{URL: unsigned.URL, Resource: "bundles/mesh", VerificationKey: keys.public}
		h := startControllerSet(t, b, &SVIDCredentials{SVID: ca.SVID(t, ztunnelPath), Bundle: ca.Bundle(), Server: controller})
		h.waitFailures(t, "mesh", reasonBundle, 1)
		if err := h.set.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), ".signatures.json") {
			t.Errorf("Ready() = %v, want ErrNotReady naming the missing .signatures.json", err)
		}

		// Said unsigned on purpose: accepted.
		b = ControllerBundle{URL: unsigned.URL, Resource: "bundles/mesh", Unsigned: true}
		h = startControllerSet(t, b, &SVIDCredentials{SVID: ca.SVID(t, ztunnelPath), Bundle: ca.Bundle(), Server: controller})
		waitFor(t, "ready", func() bool { return h.set.Ready() == nil })
		h.wantDecisions(t, map[int]string{1: "ctl/p"})
	})
}

// TestSVIDPluginConfig: SVIDPlugin is the one credentials plugin, in
// https services without server TLS settings, and needs the proxy's SVID;
// ControllerBundle needs a key or an explicit Unsigned.
func TestSVIDPluginConfig(t *testing.T) {
	svid := &SVIDCredentials{Bundle: x509bundle.NewSet(), Server: spiffeid.RequireFromString("spiffe://td/x")}
	for _, tc := range []struct {
		name   string
		config string
		svid   *SVIDCredentials
		err    string // a substring of the error; "" for none
	}{
		{name: "the plugin", config: "services: {s: {url: 'https://a', credentials: {plugin: regomesh_svid}}}\nbundles: {a: {}}\n", svid: svid},
		{name: "another plugin", config: "services: {s: {url: 'https://a', credentials: {plugin: mine}}}\nbundles: {a: {}}\n", svid: svid,
			err: `credentials plugin "mine" is not supported`},
		{name: "no SVID", config: "services: {s: {url: 'https://a', credentials: {plugin: regomesh_svid}}}\nbundles: {a: {}}\n",
			err: "needs the proxy's SVID"},
		{name: "plain HTTP", config: "services: {s: {url: 'http://a', credentials: {plugin: regomesh_svid}}}\nbundles: {a: {}}\n", svid: svid,
			err: "needs an https url"},
		{name: "a CA file", config: "services: {s: {url: 'https://a', tls: {ca_cert: /ca.pem}, credentials: {plugin: regomesh_svid}}}\nbundles: {a: {}}\n", svid: svid,
			err: "remove tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.config))
			if err == nil {
				_, err = New(nil, cfg, Options{SVID: tc.svid, Logger: testLogger(t)})
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}

	for _, tc := range []struct {
		name   string
		bundle ControllerBundle
		err    string
	}{
		{name: "no key", bundle: ControllerBundle{URL: "https://c:15013", Resource: "bundles/mesh"}, err: "no verification key"},
		{name: "key and unsigned", bundle: ControllerBundle{URL: "https://c:15013", Resource: "bundles/mesh", VerificationKey: "k", Unsigned: true}, err: "choose one"},
		{name: "no resource", bundle: ControllerBundle{URL: "https://c:15013", Unsigned: true}, err: "want bundles/<name>"},
		{name: "unsigned", bundle: ControllerBundle{URL: "https://c:15013", Resource: "bundles/waypoint/shop/wp", Unsigned: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.bundle.Config()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b := cfg.Bundles["waypoint/shop/wp"]
			if b == nil || b.Resource != "bundles/waypoint/shop/wp" || b.Signing != nil || *b.Polling.LongPollingTimeoutSeconds != 60 {
				t.Errorf("bundles %v, want waypoint/shop/wp long-polled, unsigned", cfg.Bundles)
			}
		})
	}
}
