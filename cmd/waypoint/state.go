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

// streamState subscribes to the controller's state stream (--controller)
// with the waypoint's own SVID and waits for the first state. The
// controller accepts a waypoint whose SVID is that of a workload the
// state names as a waypoint, and sends it the whole state; the last state
// stays in force while the controller is away.
func streamState(ctx context.Context, cfg config, w *waypoint.Waypoint, source *workloadapi.X509Source, log *slog.Logger) (stop func(), err error) {
	td, err := spiffeid.TrustDomainFromString(cfg.trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	controllerID, err := spiffeid.FromPath(td, "/ns/regomesh-system/sa/regomesh-controller")
	if cfg.controllerIdentity != "" {
		controllerID, err = spiffeid.FromString(cfg.controllerIdentity)
	}
	if err != nil {
		return nil, fmt.Errorf("--controller-identity: %w", err)
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
