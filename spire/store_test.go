package spire_test

import (
	"crypto/tls"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/regomesh/regomesh/spire/harness"
)

// Two workloads on one node get distinct SVIDs with the mesh's IDs, and a
// real TLS 1.3 handshake between them verifies each side with the bundles
// the store got from the agent.
func TestTwoWorkloadsHandshake(t *testing.T) {
	t.Parallel()
	n := startNode(t, harness.ServerConfig{})
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
}
