package ztunnel

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/regomesh/regomesh/hbone"
)

// A refusal's flag survives wrapping, its cause stays visible to
// errors.Is, and a refused tunnel answers the status its flag calls for.
func TestRefusal(t *testing.T) {
	cause := errors.New("cause")
	for _, tc := range []struct {
		name   string
		err    error
		cause  error
		flag   Flag
		status int
	}{
		{"loop", refuse(FlagLoop, fmt.Errorf("x: %w", errLoop)), errLoop, FlagLoop, http.StatusBadRequest},
		{"policy", refuse(FlagDenied, fmt.Errorf("%w: no", errDenied)), errDenied, FlagDenied, http.StatusUnauthorized},
		{"dial", refuse(FlagConnect, cause), cause, FlagConnect, http.StatusServiceUnavailable},
		{"no route", refuse(FlagNoRoute, cause), cause, FlagNoRoute, http.StatusServiceUnavailable},
		{"authority not the pod's", refuse(FlagNoRoute, fmt.Errorf("%w: elsewhere", hbone.ErrBadRequest)), hbone.ErrBadRequest, FlagNoRoute, http.StatusBadRequest},
		{"wrapped", fmt.Errorf("outer: %w", refuse(FlagLoop, cause)), cause, FlagLoop, http.StatusBadRequest},
		{"unclassified", cause, cause, FlagConnect, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := flagOf(tc.err); got != tc.flag {
				t.Errorf("flag %s, want %s", got, tc.flag)
			}
			if got := hbone.StatusFor(tunnelError(tc.err)); got != tc.status {
				t.Errorf("tunnel answered %d, want %d", got, tc.status)
			}
			if !errors.Is(tc.err, tc.cause) || !errors.Is(tunnelError(tc.err), tc.cause) {
				t.Errorf("%v hides its cause %v", tc.err, tc.cause)
			}
		})
	}
}

// An outbound tunnel's failure is flagged from hbone's sentinels.
func TestTunnelFlag(t *testing.T) {
	for err, want := range map[error]Flag{
		fmt.Errorf("%w: none", hbone.ErrNoSVID): FlagNoSVID,
		hbone.ErrDenied:                         FlagDenied,
		hbone.ErrUpstream:                       FlagConnect,
		hbone.ErrConnClosed:                     FlagConnect,
	} {
		if got := tunnelFlag(err); got != want {
			t.Errorf("tunnelFlag(%v) = %s, want %s", err, got, want)
		}
	}
}
