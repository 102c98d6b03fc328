package spire

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// The two kinds of streams, as labelled in metrics and logs.
const (
	streamSVIDs   = "x509_svids"
	streamBundles = "x509_bundles"
)

// streamState is the health of one stream to the agent.
type streamState struct {
	mu         sync.Mutex
	connected  bool
	since      time.Time
	lastErr    error
	reconnects int
}

// up records that the agent answered on the stream; it reports whether
// the stream was down before.
func (st *streamState) up() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	was := st.connected
	st.connected, st.lastErr = true, nil
	if !was {
		st.since = time.Now()
	}
	return !was
}

// down records why the stream broke; it reports whether this is news
// (the stream was up, or the error changed), which is worth a warning.
func (st *streamState) down(err error) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	news := st.connected || st.lastErr == nil || st.lastErr.Error() != err.Error()
	if st.connected {
		st.since = time.Now()
	}
	st.connected, st.lastErr = false, err
	st.reconnects++
	return news
}

func (st *streamState) lastError() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lastErr
}

func (st *streamState) health() StreamHealth {
	st.mu.Lock()
	defer st.mu.Unlock()
	return StreamHealth{Connected: st.connected, Since: st.since, LastError: st.lastErr, Reconnects: st.reconnects}
}

// follow keeps one stream to the agent open until ctx ends. run opens the
// stream and consumes it, calling up on each message, and returns when the
// stream breaks; follow then waits a backoff and opens it again. The
// cached state stays as it is meanwhile.
func (s *Store) follow(ctx context.Context, kind string, st *streamState, run func(ctx context.Context, up func()) error) {
	bo := newBackoff(s.cfg.MinBackoff, s.cfg.MaxBackoff)
	up := func() {
		bo.reset()
		if st.up() {
			s.log.Info("SPIRE agent stream open", "stream", kind)
		}
	}
	for {
		err := run(ctx, up)
		if ctx.Err() != nil {
			return
		}
		if st.down(err) {
			s.log.Warn("SPIRE agent stream broke; reopening with backoff, cached SVIDs are served until they expire",
				"stream", kind, "error", err)
		}
		s.notify()
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.delay()):
		}
		s.cfg.Metrics.reconnect(kind)
	}
}

// runSVIDStream subscribes to one workload's SVIDs and applies each update.
func (s *Store) runSVIDStream(ctx context.Context, wl *workload, up func()) error {
	stream, err := s.client.SubscribeToX509SVIDs(ctx, wl.desc)
	if err != nil {
		return err
	}
	for {
		update, err := stream.Recv()
		if err != nil {
			return err
		}
		up()
		s.applySVIDs(wl, update)
	}
}

// applySVIDs installs the workload's SVID from an update, or drops it when
// the update has none for the workload's ID.
func (s *Store) applySVIDs(wl *workload, u X509SVIDUpdate) {
	next := &svidState{svid: u.find(wl.desc.ID), federatesWith: u.FederatesWith}
	if next.svid == nil {
		next.offered = u.ids()
	}
	prev := wl.state.Swap(next)
	s.logSVIDChange(wl, prev, next)
	s.notify()
}

func (s *Store) logSVIDChange(wl *workload, prev, next *svidState) {
	log := s.log.With("id", wl.desc.ID, "workload", wl.desc.describe())
	had := prev != nil && prev.svid != nil
	switch {
	case next.svid == nil && had:
		log.Warn("SPIRE agent no longer issues this SVID: released", "offered", next.offered)
	case next.svid == nil && prev == nil:
		log.Warn("SPIRE agent has no entry for this workload", "offered", next.offered)
	case next.svid == nil:
	case !had:
		log.Info("SVID received", "expires", next.svid.Certificates[0].NotAfter)
	case !bytes.Equal(prev.svid.Certificates[0].Raw, next.svid.Certificates[0].Raw):
		s.cfg.Metrics.rotated()
		log.Info("SVID rotated", "expires", next.svid.Certificates[0].NotAfter)
	}
}

// runBundleStream subscribes to the agent's bundles and installs each set.
func (s *Store) runBundleStream(ctx context.Context, up func()) error {
	stream, err := s.client.SubscribeToX509Bundles(ctx)
	if err != nil {
		return err
	}
	for {
		set, err := stream.Recv()
		if err != nil {
			return err
		}
		up()
		s.bundles.Store(set)
		s.notify()
	}
}
