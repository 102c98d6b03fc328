package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel/state"
	"github.com/regomesh/regomesh/ztunnel/state/xds"
)

// controllerID is --controller-identity, by default the controller's
// service account in regomesh-system.
func (c config) controllerID() (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(c.trustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("--trust-domain: %w", err)
	}
	id, err := spiffeid.FromPath(td, "/ns/regomesh-system/sa/regomesh-controller")
	if c.controllerIdentity != "" {
		id, err = spiffeid.FromString(c.controllerIdentity)
	}
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("--controller-identity: %w", err)
	}
	return id, nil
}

// streamState subscribes to the controller's state stream (--controller)
// with the waypoint's own SVID and waits for the first state. The
// controller accepts a waypoint whose SVID is that of a workload the
// state names as a waypoint, and sends it the whole state; the last state
// stays in force while the controller is away.
func streamState(ctx context.Context, cfg config, w *waypoint.Waypoint, source *workloadapi.X509Source, log *slog.Logger) (stop func(), err error) {
	controllerID, err := cfg.controllerID()
	if err != nil {
		return nil, err
	}
	client, err := xds.NewClient(xds.ClientConfig{
		Addr: cfg.controller, SVID: source, Bundle: source, Controller: controllerID, TrustDomain: cfg.trustDomain, Logger: log,
		Apply: func(s *state.Snapshot) {
			w.SetState(s)
			log.Info("mesh state updated by the controller", "workloads", len(s.Workloads), "services", len(s.Services))
		},
	})
	if err != nil {
		return nil, err
	}
	return client.Start(ctx, cfg.controllerTimeout)
}
