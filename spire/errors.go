package spire

import (
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors callers branch on. Wrapped errors carry the detail and
// say what to check.
var (
	// ErrNoSVID: the store holds no valid SVID for an identity. Callers fail
	// closed: no SVID, no tunnel.
	ErrNoSVID = errors.New("spire: no SVID")
	// ErrNotAuthorized: the SPIRE agent refused the caller: its SPIFFE ID is
	// not in the agent's authorized_delegates, or no entry matches it.
	ErrNotAuthorized = errors.New("spire: not an authorized delegate of the SPIRE agent")
	// ErrAgentUnavailable: the SPIRE agent's admin socket does not answer.
	ErrAgentUnavailable = errors.New("spire: SPIRE agent unavailable")
	// ErrInvalidWorkload: a Workload or Registration is malformed.
	ErrInvalidWorkload = errors.New("spire: invalid workload")
	// ErrServer: the SPIRE server refused an entry operation.
	ErrServer = errors.New("spire: SPIRE server error")
)

// agentError maps an error from the agent's admin API to the package's
// errors. It is the one place where gRPC status codes become errors that
// tell the user what to check.
func agentError(socket, op string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("spire: %s on the SPIRE agent admin socket %s: %w", op, socket, err)
	}
	switch st.Code() {
	case codes.PermissionDenied:
		return fmt.Errorf("%w: the agent at %s refused %s (%q): list this process's SPIFFE ID in the agent's "+
			"authorized_delegates and register an entry for it parented to the agent (for example with selector unix:uid:%d)",
			ErrNotAuthorized, socket, op, st.Message(), os.Getuid())
	case codes.Unavailable:
		return fmt.Errorf("%w: %s on %s: is spire-agent running with admin_socket_path = %q? (%w)",
			ErrAgentUnavailable, op, socket, socket, err)
	case codes.InvalidArgument:
		return fmt.Errorf("%w: the agent at %s refused %s: %s", ErrInvalidWorkload, socket, op, st.Message())
	}
	return fmt.Errorf("spire: %s on the SPIRE agent admin socket %s: %w", op, socket, err)
}

// serverError maps an error from the SPIRE server API, naming the socket.
func serverError(socket, op string, err error) error {
	if status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%w: %s on %s: is spire-server running with socket_path = %q? (%w)",
			ErrServer, op, socket, socket, err)
	}
	return fmt.Errorf("%w: %s on %s: %w", ErrServer, op, socket, err)
}
