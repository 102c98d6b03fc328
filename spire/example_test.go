package spire_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// A ztunnel's use of the store: register a workload of the node (the
// controller's job), add it when its pod lands on the node, and build the
// workload's mTLS configuration from the store. The SPIRE server and agent
// are real ones started by the harness.
func ExampleStore() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := harness.StartServer(ctx, harness.ServerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	agent, err := srv.StartAgent(ctx, harness.AgentConfig{})
	if err != nil {
		log.Fatal(err)
	}

	// The controller registers the service account's entry on the node.
	reg, err := spire.KubernetesRegistration(srv.TrustDomain(), "demo", "web", agent.ID())
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := srv.Registrar().Apply(ctx, reg); err != nil {
		log.Fatal(err)
	}

	// ztunnel, an authorized delegate of the agent, fetches the SVID.
	client, err := spire.Dial(agent.AdminSocket())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	store := spire.NewStore(client, spire.StoreConfig{})
	defer store.Close()
	web, err := spire.KubernetesWorkload(srv.TrustDomain(), "demo", "web")
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Add(web); err != nil {
		log.Fatal(err)
	}
	if err := store.WaitReady(ctx); err != nil {
		log.Fatal(err)
	}
	svid, err := store.SVID(web.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("SVID:", svid.ID)

	// Tunnels of web present its current SVID and accept members of the
	// trust domain; every handshake asks the store, so rotation needs no
	// new configuration.
	cfg := tlsconfig.MTLSClientConfig(spire.SVIDSource(store, web.ID), store.Bundles(web.ID),
		tlsconfig.AuthorizeMemberOf(srv.TrustDomain()))
	cert, err := cfg.GetClientCertificate(nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("client certificate chain:", len(cert.Certificate), "certificate(s)")
	// Output:
	// SVID: spiffe://regomesh.test/ns/demo/sa/web
	// client certificate chain: 1 certificate(s)
}
