// Package spire gives a node's ztunnel the X509-SVIDs of the workloads on
// its node, from that node's SPIRE agent, and registers mesh workloads with
// the SPIRE server.
//
// # Identities
//
// Proxies depend on the [Identities] interface: the current SVID of a local
// workload identity, and the bundles that identity accepts peers from. A
// [Store] implements it on top of the SPIRE agent's Delegated Identity API
// (spire-api-sdk agent/delegatedidentity/v1), which the agent serves on its
// admin socket to the processes listed in its authorized_delegates:
//
//	client, _ := spire.Dial("/run/spire/admin/admin.sock")
//	store := spire.NewStore(client, spire.StoreConfig{})
//	defer store.Close()
//	w, _ := spire.KubernetesWorkload(td, "demo", "web")
//	store.Add(w) // one SubscribeToX509SVIDs stream per identity
//	cfg := tlsconfig.MTLSServerConfig(spire.SVIDSource(store, w.ID), store.Bundles(w.ID), authorizer)
//
// A workload is named to the agent by selectors (k8s:ns:<ns>, k8s:sa:<sa>),
// which the agent trusts because the caller is an authorized delegate, or
// by the PID of one of its processes, which the agent attests itself.
//
// # Rotation, failure and health
//
// The agent pushes a renewed SVID before the old one reaches half of its
// lifetime; the store swaps it in atomically. TLS configurations built with
// [SVIDSource] fetch the SVID on every handshake, so new tunnels present
// the new SVID at once, while established tunnels keep the session they
// negotiated: rotation never breaks an open connection.
//
// When the agent restarts or its socket vanishes, every stream reconnects
// with exponential backoff, and the store keeps serving the SVIDs it holds
// until they expire; after that it fails closed ([ErrNoSVID]: no SVID, no
// tunnel). [Store.Health] reports the state of each stream and why an
// identity has no SVID; [Metrics] exports the same as Prometheus series.
// An agent update that no longer carries an identity's SVID (its entry was
// deleted) releases the SVID at once.
//
// # Registration
//
// A [Registrar] creates, updates and deletes the SPIRE server entries of
// mesh workloads (spiffe://<td>/ns/<ns>/sa/<sa>, selectors k8s:ns and
// k8s:sa, parented to the node agent's SPIFFE ID), idempotently, for the
// controller and the demo. Package spire/harness runs real SPIRE servers
// and agents for tests and the demo.
package spire
