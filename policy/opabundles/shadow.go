package opabundles

import (
	"context"
	"fmt"
	"time"

	"github.com/regomesh/regomesh/policy"
)

// loadShadow reads the shadow bundles (Options.Shadow) and has the engine
// decide with them beside the set in force, counting and logging where
// they disagree; they never change a decision.
func (s *Set) loadShadow(ctx context.Context) error {
	bundles, err := s.opts.Shadow.Read()
	if err == nil {
		err = s.engine.LoadShadow(ctx, bundles...)
	}
	if err != nil {
		return fmt.Errorf("opabundles: shadow bundles %v: %w", s.opts.Shadow.Paths, err)
	}
	s.log.Info("shadow bundles loaded: decided beside the set in force, never enforced", "bundles", s.opts.Shadow.Paths)
	return nil
}

// watchShadow reloads the shadow bundles whenever a file under them
// changes from last (checked every LocalPoll) until ctx ends; a broken
// shadow set is logged and the last good one stays.
func (s *Set) watchShadow(ctx context.Context, last string) {
	tick := time.NewTicker(s.opts.LocalPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if stamp := policy.BundlesStamp(s.opts.Shadow.Paths); stamp != last {
			last = stamp
			if err := s.loadShadow(ctx); err != nil {
				s.log.Error("shadow bundles rejected; the last good shadow set stays", "error", err)
			}
		}
	}
}
