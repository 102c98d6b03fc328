package opabundles

import (
	"context"
	"time"

	"github.com/regomesh/regomesh/policy"
)

// readLocal reads the --bundle files; none configured is no bundle.
func (s *Set) readLocal() ([]*policy.Bundle, error) {
	if len(s.opts.Local.Paths) == 0 {
		return nil, nil
	}
	return s.opts.Local.Read()
}

// watchLocal reloads the set whenever a local file changes from last, the
// stamp of what Start read (checked every LocalPoll, which survives the
// file swaps inotify misses), until ctx ends. A broken local set is logged
// and rejected: the set in force stays.
func (s *Set) watchLocal(ctx context.Context, last string) {
	tick := time.NewTicker(s.opts.LocalPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if stamp := policy.BundlesStamp(s.opts.Local.Paths); stamp != last {
			last = stamp
			s.reloadLocal(ctx)
		}
	}
}

func (s *Set) reloadLocal(ctx context.Context) {
	locals, err := s.readLocal()
	if err != nil {
		s.log.Error("local bundles rejected; the last good set stays in force", "bundles", s.opts.Local.Paths, "error", err)
		if s.opts.AfterLoad != nil {
			s.opts.AfterLoad()
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	previous := s.locals
	s.locals = locals
	switch err := s.loadLocked(ctx, "local bundles changed"); err {
	case nil:
	case errIncomplete:
		// kept for the first complete set
	default:
		s.locals = previous
		s.log.Error("local bundles rejected; the last good set stays in force", "bundles", s.opts.Local.Paths, "error", err)
	}
}
