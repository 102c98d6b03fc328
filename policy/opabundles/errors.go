package opabundles

import "errors"

// ErrNotReady is Ready's answer until every remote bundle has been
// activated once: until then the engine holds no policy and every decision
// denies.
var ErrNotReady = errors.New("opabundles: not ready")

// errIncomplete: a remote bundle has no good copy yet, so the set cannot
// be activated; not a failure, the set waits.
var errIncomplete = errors.New("opabundles: waiting for the first good copy of every remote bundle")

// errNothingToLoad: the OPA configuration names no bundles (it configures
// decision logs only) and there are no local ones: loading nothing would
// be the library alone, which allows everything.
var errNothingToLoad = errors.New("opabundles: the OPA configuration names no bundles and there is no --bundle: nothing would be enforced; name the bundles under bundles or pass --bundle (docs/decision-logs.md)")
