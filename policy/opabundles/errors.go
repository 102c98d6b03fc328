package opabundles

import "errors"

// ErrNotReady is Ready's answer until every remote bundle has been
// activated once: until then the engine holds no policy and every decision
// denies.
var ErrNotReady = errors.New("opabundles: not ready")

// errIncomplete: a remote bundle has no good copy yet, so the set cannot
// be activated; not a failure, the set waits.
var errIncomplete = errors.New("opabundles: waiting for the first good copy of every remote bundle")
