package ztunnel

import (
	"errors"
	"fmt"

	"github.com/regomesh/regomesh/hbone"
)

// Flag is a connection's response flag, as Istio reports it on TCP
// metrics (label response_flags) and ztunnel in the access log
// (response_flags).
type Flag string

// Response flags. A refused connection carries the flag of the phase
// that refused it; an opened one FlagNone, or the flag of whoever closed
// it early. They are untyped constants, so they compare with a Flag and
// a string alike.
const (
	FlagNone        = "-"
	FlagDenied      = "DENY"        // policy refused the connection
	FlagConnect     = "CONNECT"     // the upstream could not be reached
	FlagTLSFailure  = "TLS_FAILURE" // the mTLS handshake failed
	FlagNoSVID      = "NO_SVID"     // no SVID for the source workload: refused, never plaintext
	FlagNoRoute     = "NO_ROUTE"    // nothing known at the destination address
	FlagLoop        = "LOOP"        // addressed to one of ztunnel's own ports: it would loop back
	FlagDrained     = "DRAINED"     // closed at the end of a drain on shutdown
	FlagPolicyClose = "POLICY"      // closed because new policy denies it
)

// errDenied is the cause of a connection ztunnel's own policy refused;
// the decision (policy, rule, reason) explains it, so the access log
// carries no error for it.
var errDenied = errors.New("denied by policy")

// refusal is why a connection did not open: the response flag, decided
// by the phase that refused it (the loop guard says LOOP, authorization
// DENY, the dial CONNECT), and the cause. errors.As finds it through any
// wrapping; errors.Is sees through it to the cause.
type refusal struct {
	flag  Flag
	cause error
}

// refuse is a refusal with flag for cause.
func refuse(flag Flag, cause error) error { return &refusal{flag: flag, cause: cause} }

func (r *refusal) Error() string { return r.cause.Error() }
func (r *refusal) Unwrap() error { return r.cause }

// flagOf is the response flag of a connection that failed with err:
// the refusal's, or FlagConnect for an error no phase classified (the
// connection could not be made).
func flagOf(err error) Flag {
	if r, ok := errors.AsType[*refusal](err); ok {
		return r.flag
	}
	return FlagConnect
}

// tunnelError is what a refused tunnel answers, the one place where a
// refusal becomes a CONNECT status (hbone.StatusFor reads the sentinel):
// a cause that already says the request was malformed keeps its 400 (an
// :authority that is not the pod's); LOOP is 400 too, a policy deny 401,
// and everything else 503.
func tunnelError(err error) error {
	if errors.Is(err, hbone.ErrBadRequest) {
		return err
	}
	switch flagOf(err) {
	case FlagLoop:
		return fmt.Errorf("%w: %w", hbone.ErrBadRequest, err)
	case FlagDenied:
		return fmt.Errorf("%w: %w", hbone.ErrDenied, err)
	case FlagConnect:
		return fmt.Errorf("%w: %w", hbone.ErrUpstream, err)
	}
	return err
}

// tunnelFlag is the flag of an outbound tunnel that did not open, read
// from hbone's sentinels: no SVID for the pod, the peer's 401, or any
// other failure to reach it.
func tunnelFlag(err error) Flag {
	switch {
	case errors.Is(err, hbone.ErrNoSVID):
		return FlagNoSVID
	case errors.Is(err, hbone.ErrDenied):
		return FlagDenied
	}
	return FlagConnect
}
