package hbone

import (
	"errors"
	"net/http"
)

// Sentinel errors. Callers branch on them with errors.Is. The first three
// carry a CONNECT status (see StatusFor); the others are local failures.
var (
	// ErrBadRequest: the CONNECT request is malformed (wrong method, an
	// :authority that is not ip:port, an unparsable Forwarded header).
	// Answered with 400.
	ErrBadRequest = errors.New("hbone: bad request")

	// ErrDenied: the handler's authorization refused the tunnel.
	// Answered with 401.
	ErrDenied = errors.New("hbone: denied")

	// ErrUpstream: the handler could not reach the destination.
	// Answered with 503. It is also what a handler that returns without
	// answering produces.
	ErrUpstream = errors.New("hbone: upstream unavailable")

	// ErrNoSVID: the client has no SVID to present for the source workload.
	// Tunnels fail closed: no SVID, no connection, never plaintext.
	ErrNoSVID = errors.New("hbone: no SVID for the source workload")

	// ErrConnClosed: the HTTP/2 connection carrying the stream is gone
	// (closed locally, by the peer, by GOAWAY, or declared dead after an
	// unanswered PING).
	ErrConnClosed = errors.New("hbone: connection closed")

	// ErrStreamReset: the stream was reset (RST_STREAM), by the peer or
	// because the peer broke the protocol on it.
	ErrStreamReset = errors.New("hbone: stream reset by peer")

	// ErrPoolClosed: Dial was called on a closed Pool.
	ErrPoolClosed = errors.New("hbone: pool closed")

	// ErrStatus: the server answered the CONNECT with a status this package
	// does not know (neither 200 nor one of the statuses above).
	ErrStatus = errors.New("hbone: unexpected status")
)

// statuses is the one table between errors and CONNECT response statuses.
// StatusFor reads it from errors to statuses (server side), errorFor from
// statuses to errors (client side), so both ends agree by construction.
var statuses = []struct {
	err    error
	status int
}{
	{ErrBadRequest, http.StatusBadRequest},
	{ErrDenied, http.StatusUnauthorized},
	{ErrUpstream, http.StatusServiceUnavailable},
}

// StatusFor is the one place that maps an error to the status of a CONNECT
// response: nil is 200 (tunnel open), ErrBadRequest 400, ErrDenied 401,
// and anything else 503, so an unexpected failure never opens a tunnel.
func StatusFor(err error) int {
	if err == nil {
		return http.StatusOK
	}
	for _, s := range statuses {
		if errors.Is(err, s.err) {
			return s.status
		}
	}
	return http.StatusServiceUnavailable
}

// errorFor is the client's reading of a non-200 status: the sentinel the
// server's error wrapped, or ErrStatus for a status outside the table.
func errorFor(status int) error {
	for _, s := range statuses {
		if s.status == status {
			return s.err
		}
	}
	return ErrStatus
}
