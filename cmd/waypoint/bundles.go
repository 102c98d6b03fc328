package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/regomesh/regomesh/policy"
)

// loadBundles reads and loads the --bundle set, verified with
// --verification-key when given; the engine keeps the last good set when
// this one fails.
func loadBundles(ctx context.Context, cfg config, engine *policy.Engine) error {
	var v *policy.Verification
	if cfg.verifyKey != "" {
		key, err := policy.ReadVerificationKey(cfg.verifyKey, "RS256")
		if err != nil {
			return err
		}
		v = &policy.Verification{Keys: map[string]policy.VerificationKey{"default": key}, KeyID: "default"}
	}
	bundles, err := policy.ReadBundles(cfg.bundles, v)
	if err != nil {
		return err
	}
	return engine.Load(ctx, bundles...)
}

// watchBundles reloads the bundles when a file under them changes, as
// ztunnel does; a broken set is rejected and the last good one stays in
// force.
func watchBundles(ctx context.Context, cfg config, engine *policy.Engine, log *slog.Logger) {
	last := policy.BundlesStamp(cfg.bundles)
	tick := time.NewTicker(cfg.bundlePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stamp := policy.BundlesStamp(cfg.bundles)
		if stamp == last {
			continue
		}
		last = stamp
		if err := loadBundles(ctx, cfg, engine); err != nil {
			log.Error("policy bundles rejected; the last good policy stays in force", "error", err)
		}
	}
}
