package policy

import (
	"context"
	"log/slog"
	"time"
)

// BundleFiles is the bundle set a proxy reads from disk: ztunnel's and the
// waypoint's --bundle paths, and --verification-key.
type BundleFiles struct {
	// Paths are bundle directories or .tar.gz files.
	Paths []string
	// VerifyKey, when set, is a PEM public key (or, for an HS algorithm,
	// a secret) every bundle's signature must verify against.
	VerifyKey string
	// VerifyAlgorithm is VerifyKey's signature algorithm (see
	// VerificationKey); empty means RS256.
	VerifyAlgorithm string
}

// Load reads the set and loads it into engine; the engine keeps the last
// good set when this one fails.
func (f BundleFiles) Load(ctx context.Context, engine *Engine) error {
	bundles, err := f.Read()
	if err != nil {
		return err
	}
	return engine.Load(ctx, bundles...)
}

// Read reads and verifies the set without loading it, for callers that
// load it together with other bundles.
func (f BundleFiles) Read() ([]*Bundle, error) {
	var v *Verification
	if f.VerifyKey != "" {
		key, err := ReadVerificationKey(f.VerifyKey, f.VerifyAlgorithm)
		if err != nil {
			return nil, err
		}
		v = &Verification{Keys: map[string]VerificationKey{"default": key}, KeyID: "default"}
	}
	return ReadBundles(f.Paths, v)
}

// Watch reloads the set whenever a file under it changes (checked every
// poll) until ctx is done; a broken set is logged and rejected, and the
// last good one stays in force. after, if not nil, runs after each
// attempt.
func (f BundleFiles) Watch(ctx context.Context, engine *Engine, poll time.Duration, log *slog.Logger, after func()) {
	last := BundlesStamp(f.Paths)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stamp := BundlesStamp(f.Paths)
		if stamp == last {
			continue
		}
		last = stamp
		if err := f.Load(ctx, engine); err != nil {
			log.Error("policy bundles rejected; the last good policy stays in force", "error", err)
		}
		if after != nil {
			after()
		}
	}
}
