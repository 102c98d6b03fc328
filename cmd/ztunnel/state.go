package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// watchLocalConfig loads --local-config and keeps it current; a broken
// file keeps the last good state.
func watchLocalConfig(ctx context.Context, cfg config, z *ztunnel.Ztunnel, log *slog.Logger) error {
	opts := state.Options{TrustDomain: cfg.trustDomain}
	snap, loaded, err := state.ReadFile(cfg.localConfig, opts)
	if err != nil {
		return err
	}
	z.SetState(ctx, snap)
	go state.Watch(ctx, cfg.localConfig, loaded, opts, cfg.statePoll,
		func(s *state.Snapshot) {
			z.SetState(ctx, s)
			log.Info("mesh state reloaded", "workloads", len(s.Workloads))
			releaseMemory()
		},
		func(err error) { log.Error("local config rejected; the last good state stays in force", "error", err) })
	return nil
}

// ownSVID is ztunnel's own SVID source for the stream and the bundle
// server, spiffe://<trust domain>/regomesh/ztunnel/<node>, from the SPIRE
// agent's Workload API: it waits for the first SVID and checks it is the
// one for --node.
func ownSVID(ctx context.Context, cfg config, td spiffeid.TrustDomain) (*workloadapi.X509Source, error) {
	if cfg.node == "" {
		return nil, fmt.Errorf("--controller: --node (or $NODE_NAME) is required: ztunnel subscribes for its node")
	}
	want, err := xds.ZtunnelID(td, cfg.node)
	if err != nil {
		return nil, fmt.Errorf("--node %q: %w", cfg.node, err)
	}
	wait, cancel := context.WithTimeout(ctx, cfg.controllerTimeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(wait, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.spireWorkloadSocket)))
	if err != nil {
		return nil, fmt.Errorf("no SVID for ztunnel from the SPIRE agent's Workload API at %s within %s: %w (is the socket mounted, and an entry registered for %s?)",
			cfg.spireWorkloadSocket, cfg.controllerTimeout, err, want)
	}
	svid, err := source.GetX509SVID()
	if err == nil && svid.ID != want {
		err = fmt.Errorf("ztunnel's SVID is %s, but the controller accepts node %s's ztunnel as %s: register that entry for this node's ztunnel", svid.ID, cfg.node, want)
	}
	if err != nil {
		source.Close()
		return nil, fmt.Errorf("--controller: %w", err)
	}
	return source, nil
}

// streamState subscribes to the controller's state stream (--controller)
// with ztunnel's own SVID (ownSVID), and waits for the first state. The
// last state stays in force while the controller is away.
func streamState(ctx context.Context, cfg config, controllerID spiffeid.ID, source *workloadapi.X509Source, z *ztunnel.Ztunnel, log *slog.Logger) (stop func(), err error) {
	client, err := xds.NewClient(xds.ClientConfig{
		Addr: cfg.controller, SVID: source, Bundle: source, Controller: controllerID, Node: cfg.node, TrustDomain: cfg.trustDomain,
		Logger: log,
		Apply: func(s *state.Snapshot) {
			z.SetState(ctx, s)
			log.Info("mesh state updated by the controller", "workloads", len(s.Workloads), "services", len(s.Services))
			releaseMemory()
		},
	})
	if err != nil {
		return nil, err
	}
	z.DemandFrom(client) // the controller sends this node's scope: other destinations on demand
	return client.Start(ctx, cfg.controllerTimeout)
}

// controllerIdentity is --controller-identity, by default the controller's
// service account in Istio's root namespace.
func controllerIdentity(flag string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if flag == "" {
		return spiffeid.FromPath(td, "/ns/regomesh-system/sa/regomesh-controller")
	}
	id, err := spiffeid.FromString(flag)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("--controller-identity: %w", err)
	}
	return id, nil
}
