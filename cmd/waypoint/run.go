package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/istio"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/waypoint"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
)

func run(ctx context.Context, cfg config) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	source, err := x509Source(ctx, cfg)
	if err != nil {
		return err
	}
	defer source.Close()
	engine, bundles, closeEngine, err := policyEngine(ctx, cfg, source, reg, log)
	if err != nil {
		return err
	}
	defer closeEngine()
	accessOut, err := openLog(cfg.accessLog)
	if err != nil {
		return err
	}
	w, err := waypoint.New(waypoint.Config{
		SVID: source, Bundle: source, Policy: engine,
		Metrics: waypoint.NewMetrics(reg), AccessLog: waypoint.NewAccessLog(accessOut), Logger: log,
	})
	if err != nil {
		return err
	}
	if cfg.controller != "" {
		stopStream, err := streamState(ctx, cfg, w, source, log)
		if err != nil {
			return err
		}
		defer stopStream()
	} else if err := watchState(ctx, cfg, w, log); err != nil {
		return err
	}
	if len(cfg.routes) > 0 {
		if err := startRoutes(ctx, cfg, w, log); err != nil {
			return err
		}
	}
	if len(cfg.requestAuthn) > 0 {
		keys, err := startAuthn(ctx, cfg, w, log)
		if err != nil {
			return err
		}
		defer keys.Close()
	}
	l, err := net.Listen("tcp", cfg.hboneAddr)
	if err != nil {
		return fmt.Errorf("--hbone-addr: %w", err)
	}
	go w.Serve(l)
	servers, err := serve(cfg, w, engine, bundles, source, reg, level)
	if err != nil {
		return err
	}
	log.Info("waypoint ready", "id", w.ID().String(), "hbone", cfg.hboneAddr, "admin", cfg.adminAddr)
	<-ctx.Done()
	log.Info("shutting down: draining requests in flight", "deadline", cfg.drainTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	err = w.Shutdown(drainCtx)
	for _, s := range servers {
		s.Shutdown(drainCtx)
	}
	return err
}

// x509Source is the waypoint's own identity and trust bundles, from the
// SPIRE agent's Workload API; it waits for the first SVID.
func x509Source(ctx context.Context, cfg config) (*workloadapi.X509Source, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.spireTimeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+cfg.spireSocket)))
	if err != nil {
		return nil, fmt.Errorf("no SVID from the SPIRE agent's Workload API at %s within %s: %w (is the agent running, the socket mounted, and an entry registered for this waypoint?)",
			cfg.spireSocket, cfg.spireTimeout, err)
	}
	return source, nil
}

// watchState loads --local-config and keeps it current; a broken file
// keeps the last good state.
func watchState(ctx context.Context, cfg config, w *waypoint.Waypoint, log *slog.Logger) error {
	opts := state.Options{TrustDomain: cfg.trustDomain}
	snap, loaded, err := state.ReadFile(cfg.localConfig, opts)
	if err != nil {
		return err
	}
	w.SetState(snap)
	go state.Watch(ctx, cfg.localConfig, loaded, opts, cfg.statePoll,
		func(s *state.Snapshot) {
			w.SetState(s)
			log.Info("mesh state reloaded", "workloads", len(s.Workloads), "services", len(s.Services))
		},
		func(err error) { log.Error("local config rejected; the last good state stays in force", "error", err) })
	return nil
}

// startAuthn loads --request-authentication, waits for its key sets'
// first fetch (briefly: a failed one is retried in the background), and
// reloads it on change; a broken set keeps the last good one.
func startAuthn(ctx context.Context, cfg config, w *waypoint.Waypoint, log *slog.Logger) (*waypoint.KeySets, error) {
	keys := waypoint.NewKeySets(waypoint.KeySetsConfig{Refresh: cfg.jwksRefresh, Logger: log})
	a, err := loadAuthn(cfg, keys, log)
	if err != nil {
		keys.Close()
		return nil, fmt.Errorf("--request-authentication: %w", err)
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	keys.WaitFetched(wait)
	cancel()
	w.SetAuthn(a)
	go watchFiles(ctx, cfg.requestAuthn, cfg.bundleFlags.Poll, func() {
		a, err := loadAuthn(cfg, keys, log)
		if err != nil {
			log.Error("RequestAuthentications rejected; the last good set stays in force", "error", err)
			return
		}
		w.SetAuthn(a)
	})
	return keys, nil
}

// startRoutes loads --routes (HTTPRoutes and VirtualServices) and reloads
// it on change; a set that fails to load keeps the last good one.
func startRoutes(ctx context.Context, cfg config, w *waypoint.Waypoint, log *slog.Logger) error {
	rs, err := loadRoutes(cfg, log)
	if err != nil {
		return fmt.Errorf("--routes: %w", err)
	}
	w.SetRoutes(rs)
	go watchFiles(ctx, cfg.routes, cfg.bundleFlags.Poll, func() {
		rs, err := loadRoutes(cfg, log)
		if err != nil {
			log.Error("routes rejected; the last good set stays in force", "error", err)
			return
		}
		w.SetRoutes(rs)
	})
	return nil
}

func loadRoutes(cfg config, log *slog.Logger) (*waypoint.Routes, error) {
	res, err := waypoint.ReadRoutes(cfg.routes)
	if err != nil {
		return nil, err
	}
	rs, notes, err := waypoint.NewRouteSet(res, cfg.clusterDomain)
	for _, n := range notes {
		log.Warn("--routes: " + n)
	}
	if err != nil {
		return nil, err
	}
	log.Info("routes loaded", "httproutes", len(res.HTTPRoutes), "virtualservices", len(res.VirtualServices), "attachments", rs.Len())
	return rs, nil
}

// watchFiles calls reload whenever the files under paths change (checked
// every poll), until ctx ends.
func watchFiles(ctx context.Context, paths []string, poll time.Duration, reload func()) {
	last := policy.BundlesStamp(paths)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if stamp := policy.BundlesStamp(paths); stamp != last {
			last = stamp
			reload()
		}
	}
}

// loadAuthn reads the RequestAuthentications of --request-authentication
// (other kinds are skipped with a warning: AuthorizationPolicies reach
// the waypoint translated, in its bundles).
func loadAuthn(cfg config, keys *waypoint.KeySets, log *slog.Logger) (*waypoint.Authn, error) {
	res, notes, err := istio.DecodeFiles(cfg.requestAuthn)
	if err != nil {
		return nil, err
	}
	for _, n := range notes {
		log.Warn("--request-authentication: "+n.Message, "at", n.Pos)
	}
	for _, p := range res.AuthorizationPolicies {
		log.Warn("--request-authentication: skipped an AuthorizationPolicy: translate it into a --bundle", "policy", p.ID(), "at", p.Origin)
	}
	for _, pa := range res.PeerAuthentications {
		log.Warn("--request-authentication: skipped a PeerAuthentication: translate it into ztunnel's bundle", "policy", pa.ID(), "at", pa.Origin)
	}
	a, err := waypoint.NewAuthn(res.RequestAuthentications, waypoint.AuthnConfig{
		Options: istio.Options{RootNamespace: cfg.rootNamespace}, Waypoint: cfg.gateway, Keys: keys,
	})
	if err != nil {
		return nil, err
	}
	log.Info("RequestAuthentications loaded", "count", len(res.RequestAuthentications), "gateway", cfg.gateway)
	return a, nil
}

// policyEngine makes the engine and starts its bundle set: the --bundle
// files are loaded before it returns (a broken one is an error), the
// downloaded bundles (--opa-config's or the controller's, with the
// waypoint's SVID from source) as they arrive. The func stops the set and
// closes the decision log.
func policyEngine(ctx context.Context, cfg config, source *workloadapi.X509Source, reg prometheus.Registerer, log *slog.Logger) (*policy.Engine, *opabundles.Set, func(), error) {
	metrics := policy.NewMetrics(reg)
	pcfg := policy.Config{Metrics: metrics, Logger: log}
	controllerID, err := cfg.controllerID()
	if err != nil {
		return nil, nil, nil, err
	}
	svid := &opabundles.SVIDCredentials{SVID: source, Bundle: source, Server: controllerID}
	dl, closeLog, err := opabundles.DecisionLog(opabundles.DecisionLogFiles{Path: cfg.decisionLog, OPAConfig: cfg.bundleFlags.OPAConfig, Shadow: cfg.shadowLog},
		svid, metrics, reg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	pcfg.DecisionLog = dl
	engine, err := policy.NewEngine(pcfg)
	if err != nil {
		closeLog()
		return nil, nil, nil, err
	}
	bundles, err := cfg.bundleSet(engine, svid, reg, log)
	if err == nil {
		err = bundles.Start(ctx)
	}
	if err != nil {
		closeLog()
		return nil, nil, nil, err
	}
	return engine, bundles, func() { bundles.Stop(); closeLog() }, nil
}

func openLog(path string) (io.Writer, error) {
	switch path {
	case "off", "":
		return nil, nil
	case "-":
		return os.Stdout, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("--access-log: %w", err)
	}
	return f, nil
}

// serve starts the admin (ztunnel's handler: config dump, log level,
// pprof), metrics and readiness endpoints.
func serve(cfg config, w *waypoint.Waypoint, engine *policy.Engine, bundles *opabundles.Set, source *workloadapi.X509Source,
	reg *prometheus.Registry, level *slog.LevelVar) ([]*http.Server, error) {
	ready := func() error { return errors.Join(w.Ready(), bundles.Ready()) }
	handlers := map[string]http.Handler{
		cfg.adminAddr: ztunnel.AdminHandler(ztunnel.AdminSources{
			State: w.State, Revisions: engine.Revisions, Generation: engine.Generation,
			Certificates: func() []ztunnel.CertificateInfo { return certificates(source) },
			LogLevel:     level, Ready: ready,
		}),
		cfg.metricsAddr:   promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		cfg.readinessAddr: ztunnel.ReadinessHandler(ready),
	}
	var servers []*http.Server
	for addr, h := range handlers {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(l)
		servers = append(servers, srv)
	}
	return servers, nil
}

// certificates describes the waypoint's SVID for the config dump, without
// its key.
func certificates(source *workloadapi.X509Source) []ztunnel.CertificateInfo {
	svid, err := source.GetX509SVID()
	if err != nil {
		return []ztunnel.CertificateInfo{{Error: err.Error()}}
	}
	if len(svid.Certificates) == 0 {
		return []ztunnel.CertificateInfo{{Identity: svid.ID.String(), Error: errors.New("empty SVID").Error()}}
	}
	leaf := svid.Certificates[0]
	return []ztunnel.CertificateInfo{{
		Identity: svid.ID.String(), SerialNumber: leaf.SerialNumber.String(),
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Chain: len(svid.Certificates),
	}}
}
