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
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/policy/opabundles"
	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/cni"
)

func run(ctx context.Context, cfg config) error {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	td, err := spiffeid.TrustDomainFromString(cfg.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	var svid *workloadapi.X509Source // ztunnel's own, with --controller
	var controllerID spiffeid.ID
	if cfg.controller != "" {
		if controllerID, err = controllerIdentity(cfg.controllerIdentity, td); err != nil {
			return err
		}
		if svid, err = ownSVID(ctx, cfg, td); err != nil {
			return err
		}
		defer svid.Close()
	}
	engine, bundles, closeEngine, err := policyEngine(ctx, cfg, bundleCredentials(svid, controllerID), reg, log)
	if err != nil {
		return err
	}
	defer closeEngine()
	ids, err := identities(cfg, reg, log)
	if err != nil {
		return err
	}
	defer ids.Close()
	accessOut, err := openLog(cfg.accessLog)
	if err != nil {
		return err
	}
	metrics := ztunnel.NewMetrics(reg)
	z, err := ztunnel.New(ztunnel.Config{
		Node: cfg.node, TrustDomain: td, Policy: engine, Identities: ids, Conn: cfg.hbone.conn(metrics.HBONERefused),
		Metrics: metrics, AccessLog: ztunnel.NewAccessLog(accessOut), Logger: log, PodsFile: cfg.podsFile,
		ServicePorts: cfg.servicePorts(),
	})
	if err != nil {
		return err
	}
	if cfg.controller != "" {
		stopStream, err := streamState(ctx, cfg, controllerID, svid, z, log)
		if err != nil {
			return err
		}
		defer stopStream()
	} else if err := watchLocalConfig(ctx, cfg, z, log); err != nil {
		return err
	}
	if n, err := z.RestorePods(ctx); err != nil || n > 0 {
		log.Info("restored the pods enrolled before the restart", "restored", n, "error", err)
	}
	go z.WatchPolicy(ctx)
	servers, err := serve(ctx, cfg, z, engine, bundles, ids, reg, level, log)
	if err != nil {
		return err
	}
	releaseMemory()
	log.Info("ztunnel ready", "node", cfg.node, "cni_socket", cfg.cniSocket, "admin", cfg.adminAddr)
	<-ctx.Done()
	log.Info("shutting down: draining open connections", "deadline", cfg.drainTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	err = z.Shutdown(drainCtx)
	for _, s := range servers {
		s.Close()
	}
	return err
}

// bundleCredentials are ztunnel's SVID, with --controller, for the
// services of its bundles that name opabundles.SVIDPlugin (the
// controller's bundle server); nil without --controller.
func bundleCredentials(svid *workloadapi.X509Source, controllerID spiffeid.ID) *opabundles.SVIDCredentials {
	if svid == nil {
		return nil
	}
	return &opabundles.SVIDCredentials{SVID: svid, Bundle: svid, Server: controllerID}
}

// policyEngine makes the engine and starts its bundle set: the --bundle
// files are loaded before it returns (a broken one is an error), the
// downloaded bundles (--opa-config's or the controller's) as they arrive.
// The func stops the set and closes the decision log.
func policyEngine(ctx context.Context, cfg config, svid *opabundles.SVIDCredentials, reg prometheus.Registerer, log *slog.Logger) (*policy.Engine, *opabundles.Set, func(), error) {
	metrics := policy.NewMetrics(reg)
	pcfg := policy.Config{Metrics: metrics, Logger: log}
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
	bundles, err := cfg.bundleSet(engine, svid, reg, log, releaseMemory)
	if err == nil {
		err = bundles.Start(ctx)
	}
	if err != nil {
		closeLog()
		return nil, nil, nil, err
	}
	return engine, bundles, func() { bundles.Stop(); closeLog() }, nil
}

// releaseMemory returns the memory a load just used to the system. Loading
// the mesh state or compiling policy is a burst: decoding 10,000 workloads
// of YAML allocates about 60 MB that is garbage a moment later, which the
// Go runtime would otherwise keep resident for minutes. Loads are rare, so
// the full collection this costs is too.
func releaseMemory() { debug.FreeOSMemory() }

func identities(cfg config, reg prometheus.Registerer, log *slog.Logger) (spireIdentities, error) {
	client, err := spire.Dial(cfg.spireSocket)
	if err != nil {
		return spireIdentities{}, fmt.Errorf("SPIRE agent admin socket %s: %w", cfg.spireSocket, err)
	}
	metrics := spire.NewMetrics(reg)
	return spireIdentities{spire.NewStore(client, spire.StoreConfig{Logger: log.With("component", "spire"), Metrics: metrics})}, nil
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

// serve starts the CNI socket and the admin, metrics and readiness
// endpoints.
func serve(ctx context.Context, cfg config, z *ztunnel.Ztunnel, engine *policy.Engine, bundles *opabundles.Set, ids spireIdentities,
	reg *prometheus.Registry, level *slog.LevelVar, log *slog.Logger) ([]io.Closer, error) {
	cniListener, err := cni.Listen(cfg.cniSocket)
	if err != nil {
		return nil, fmt.Errorf("--cni-socket: %w", err)
	}
	go cni.Serve(ctx, cniListener, z, log.With("component", "cni"))
	ready := func() error { return errors.Join(z.Ready(), ids.Health().Err(), bundles.Ready()) }
	handlers := map[string]http.Handler{
		cfg.adminAddr: ztunnel.AdminHandler(ztunnel.AdminSources{
			State: z.State, Revisions: engine.Revisions, Generation: engine.Generation, Certificates: z.Certificates,
			LogLevel: level, Ready: ready,
		}),
		cfg.metricsAddr:   promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		cfg.readinessAddr: ztunnel.ReadinessHandler(ready),
	}
	closers := []io.Closer{cniListener}
	for addr, h := range handlers {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(l)
		closers = append(closers, srv)
	}
	return closers, nil
}
