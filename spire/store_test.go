package spire_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// Two workloads on one node get distinct SVIDs with the mesh's IDs, and a
// real TLS 1.3 handshake between them verifies each side with the bundles
// the store got from the agent.
func TestTwoWorkloadsHandshake(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	srv := harness.NewServer(t, harness.ServerConfig{})
	n := newNode(t, srv, srv.NewAgent(t, harness.AgentConfig{}), spire.StoreConfig{Metrics: spire.NewMetrics(reg)})
	web, db := n.register(t, "demo", "web"), n.register(t, "demo", "db")
	webSVID, dbSVID := n.add(t, web), n.add(t, db)
	waitReady(t, n.store)

	for _, tc := range []struct {
		name string
		got  string
		want string
	}{
		{"web ID", webSVID.ID.String(), "spiffe://regomesh.test/ns/demo/sa/web"},
		{"db ID", dbSVID.ID.String(), "spiffe://regomesh.test/ns/demo/sa/db"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	if webSVID.Certificates[0].SerialNumber.Cmp(dbSVID.Certificates[0].SerialNumber) == 0 {
		t.Errorf("web and db share a certificate serial")
	}

	addr := serveEcho(t, n.store, db.ID, tlsconfig.AuthorizeID(web.ID))
	conn, err := dial(n.store, web.ID, db.ID, addr)
	if err != nil {
		t.Fatalf("web -> db: %v", err)
	}
	defer conn.Close()
	state := conn.ConnectionState()
	if state.Version != tls.VersionTLS13 {
		t.Errorf("TLS version %x, want TLS 1.3", state.Version)
	}
	if !state.PeerCertificates[0].Equal(dbSVID.Certificates[0]) {
		t.Errorf("web saw a peer certificate other than db's SVID")
	}

	if got := counter(t, reg, "regomesh_spire_svids", nil); got != 2 {
		t.Errorf("regomesh_spire_svids = %v, want 2", got)
	}
	if got := counter(t, reg, "regomesh_spire_svid_expiry_seconds", nil); got <= 3500 || got > 3600 {
		t.Errorf("regomesh_spire_svid_expiry_seconds = %v, want just under the default TTL of 3600", got)
	}
}

// A workload without an entry gets no SVID and a clear error; the other
// workloads of the node are not affected; the SVID appears once the entry
// is created, goes away when it is deleted, and Remove releases it.
func TestWorkloadWithoutEntry(t *testing.T) {
	t.Parallel()
	n := startNode(t, harness.ServerConfig{})
	ctx := context.Background()
	web := n.register(t, "demo", "web")
	webSVID := n.add(t, web)
	ghost := workload(t, n.srv.TrustDomain(), "demo", "ghost")
	if err := n.store.Add(ghost); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the agent to answer for ghost", func() bool {
		_, err := n.store.SVID(ghost.ID)
		return strings.Contains(err.Error(), "no registration entry")
	})

	_, err := n.store.SVID(ghost.ID)
	t.Logf("SVID: %v", err)
	wantErr(t, err, spire.ErrNoSVID, "no SVID for spiffe://regomesh.test/ns/demo/sa/ghost",
		"no registration entry matching selectors [k8s:ns:demo k8s:sa:ghost]", "parented to the agent")
	if got, err := n.store.SVID(web.ID); err != nil || got != webSVID {
		t.Errorf("web's SVID changed while ghost has none: %v, %v", got, err)
	}
	health := n.store.Health()
	wantErr(t, health.Err(), spire.ErrNoSVID, "ns/demo/sa/ghost")
	if strings.Contains(health.Err().Error(), "sa/web") {
		t.Errorf("health blames web: %v", health.Err())
	}
	addr := serveEcho(t, n.store, web.ID, tlsconfig.AuthorizeID(web.ID))
	if _, err := dial(n.store, ghost.ID, web.ID, addr); err == nil {
		t.Errorf("ghost opened a tunnel without an SVID")
	}
	conn, err := dial(n.store, web.ID, web.ID, addr)
	if err != nil {
		t.Fatalf("web -> web while ghost has no SVID: %v", err)
	}
	conn.Close()

	t.Run("entry created later", func(t *testing.T) {
		n.register(t, "demo", "ghost")
		if svid := waitSVID(t, n.store, ghost.ID); svid.ID != ghost.ID {
			t.Errorf("got SVID %s", svid.ID)
		}
	})
	t.Run("entry deleted", func(t *testing.T) {
		if _, err := n.srv.Registrar().Delete(ctx, ghost.ID, n.agent.ID()); err != nil {
			t.Fatal(err)
		}
		eventually(t, 15*time.Second, "ghost's SVID to be released", func() bool {
			_, err := n.store.SVID(ghost.ID)
			return err != nil
		})
	})
	t.Run("removed", func(t *testing.T) {
		n.store.Remove(ghost.ID)
		_, err := n.store.SVID(ghost.ID)
		wantErr(t, err, spire.ErrNoSVID, "not a workload of this node")
		if _, err := n.store.SVID(web.ID); err != nil {
			t.Errorf("web lost its SVID: %v", err)
		}
	})
	t.Run("SVID issued for another ID", func(t *testing.T) {
		reg := spire.Registration{
			ID:        spiffeid.RequireFromString("spiffe://regomesh.test/legacy/api"),
			Parent:    n.agent.ID(),
			Selectors: spire.KubernetesSelectors("legacy", "api"),
		}
		if _, _, err := n.srv.Registrar().Apply(ctx, reg); err != nil {
			t.Fatal(err)
		}
		api := workload(t, n.srv.TrustDomain(), "legacy", "api")
		if err := n.store.Add(api); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the agent to answer for api", func() bool {
			_, err := n.store.SVID(api.ID)
			return strings.Contains(err.Error(), "issues [spiffe://regomesh.test/legacy/api]")
		})
		_, err := n.store.SVID(api.ID)
		wantErr(t, err, spire.ErrNoSVID, "check the SPIFFE ID of the entry")
	})
}

// A workload named by the PID of one of its processes: the agent attests
// the process itself (here by the path of its binary).
func TestWorkloadByPID(t *testing.T) {
	t.Parallel()
	n := startNode(t, harness.ServerConfig{})
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary to attest:", err)
	}
	if sleep, err = filepath.EvalSymlinks(sleep); err != nil {
		t.Fatal(err)
	}
	proc := exec.Command(sleep, "120")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc.Process.Kill()
		proc.Wait()
	})
	id := spiffeid.RequireFromString("spiffe://regomesh.test/ns/demo/sa/sleeper")
	reg := spire.Registration{ID: id, Parent: n.agent.ID(), Selectors: []spire.Selector{{Type: "unix", Value: "path:" + sleep}}}
	if _, _, err := n.srv.Registrar().Apply(context.Background(), reg); err != nil {
		t.Fatal(err)
	}
	// The process also matches the delegate's own entry (same uid): the
	// agent issues both SVIDs and the store keeps the expected one.
	if svid := n.add(t, spire.ProcessWorkload(id, proc.Process.Pid)); svid.ID != id {
		t.Errorf("got SVID %s, want %s", svid.ID, id)
	}
}

// Two trust domains that federate: a workload whose entry federates with
// the other domain verifies its peers; one whose entry does not, refuses
// them.
func TestFederatedBundles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tdA, tdB := spiffeid.RequireTrustDomainFromString("a.test"), spiffeid.RequireTrustDomainFromString("b.test")
	srvA, srvB := harness.NewServer(t, harness.ServerConfig{TrustDomain: tdA}), harness.NewServer(t, harness.ServerConfig{TrustDomain: tdB})
	if err := srvA.Federate(ctx, srvB); err != nil {
		t.Fatal(err)
	}
	a := newNode(t, srvA, srvA.NewAgent(t, harness.AgentConfig{}), spire.StoreConfig{})
	b := newNode(t, srvB, srvB.NewAgent(t, harness.AgentConfig{}), spire.StoreConfig{})
	web := a.register(t, "demo", "web", federatesWith(tdB))
	loner := a.register(t, "demo", "loner")
	db := b.register(t, "demo", "db", federatesWith(tdA))
	a.add(t, web)
	a.add(t, loner)
	b.add(t, db)
	for _, n := range []*node{a, b} {
		eventually(t, 15*time.Second, "both trust domains' bundles", func() bool {
			return len(n.store.Health().TrustDomains) == 2
		})
	}

	addr := serveEcho(t, b.store, db.ID, tlsconfig.AuthorizeMemberOf(tdA))
	conn, err := dial(a.store, web.ID, db.ID, addr)
	if err != nil {
		t.Fatalf("a.test web -> b.test db: %v", err)
	}
	conn.Close()
	if _, err := dial(a.store, loner.ID, db.ID, addr); err == nil || !strings.Contains(err.Error(), "does not federate with trust domain") {
		t.Errorf("loner (no federates_with) verified a b.test peer: %v", err)
	}
}

func federatesWith(tds ...spiffeid.TrustDomain) func(*spire.Registration) {
	return func(r *spire.Registration) { r.FederatesWith = tds }
}

// wantErr checks that err wraps each sentinel error and contains each text.
func wantErr(t *testing.T, err error, sentinel error, texts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q does not wrap %q", err, sentinel)
	}
	for _, text := range texts {
		if !strings.Contains(err.Error(), text) {
			t.Errorf("error %q does not say %q", err, text)
		}
	}
}
