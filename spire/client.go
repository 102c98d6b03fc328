package spire

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	debugv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/debug/v1"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultAdminSocket is where regomesh's charts put the SPIRE agent's admin
// socket (the agent's admin_socket_path). It must not be in the directory of
// the agent's Workload API socket, nor below it: the agent refuses that.
const DefaultAdminSocket = "/run/spire/admin/admin.sock"

// Client talks to one SPIRE agent's admin API: the Delegated Identity API
// and the debug API. It is safe for concurrent use. The connection is made
// lazily and re-made after failures; streams that break must be reopened
// by the caller (Store does it).
type Client struct {
	socket    string
	conn      *grpc.ClientConn
	delegated delegatedv1.DelegatedIdentityClient
	debug     debugv1.DebugClient
}

// Dial prepares a client for the agent admin socket at path (a file path,
// or a unix:// URL). It does not connect yet, so it succeeds while the
// agent is down.
func Dial(socket string) (*Client, error) {
	path := strings.TrimPrefix(socket, "unix://")
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("spire: admin socket %q: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: 5 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("spire: admin socket %q: %w", socket, err)
	}
	return &Client{
		socket:    abs,
		conn:      conn,
		delegated: delegatedv1.NewDelegatedIdentityClient(conn),
		debug:     debugv1.NewDebugClient(conn),
	}, nil
}

// reconnectBackoff bounds how long gRPC waits between attempts to reach a
// restarted agent (its default grows to two minutes).
var reconnectBackoff = grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second}

// Socket is the admin socket path the client talks to.
func (c *Client) Socket() string { return c.socket }

// Close closes the connection; open streams end with an error.
func (c *Client) Close() error { return c.conn.Close() }

// AgentID returns the SPIFFE ID of the agent, the parent of the entries of
// the workloads on its node (debug API GetInfo).
func (c *Client) AgentID(ctx context.Context) (spiffeid.ID, error) {
	info, err := c.debug.GetInfo(ctx, &debugv1.GetInfoRequest{})
	if err != nil {
		return spiffeid.ID{}, agentError(c.socket, "GetInfo", err)
	}
	chain := info.GetSvidChain()
	if len(chain) == 0 {
		return spiffeid.ID{}, fmt.Errorf("spire: the agent at %s has no SVID yet: has it attested to the server?", c.socket)
	}
	id, err := idFromProto(chain[0].GetId())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("spire: the agent at %s reports SPIFFE ID %v: %w", c.socket, chain[0].GetId(), err)
	}
	return id, nil
}

// X509SVIDStream is an open SubscribeToX509SVIDs stream for one workload.
type X509SVIDStream struct {
	socket string
	stream grpc.ServerStreamingClient[delegatedv1.SubscribeToX509SVIDsResponse]
}

// SubscribeToX509SVIDs opens a stream of the workload's SVIDs. The agent
// sends the current set at once (empty when no entry matches the workload)
// and again on every change (rotation, entries added or deleted). The
// stream lives until ctx ends or the agent goes away.
func (c *Client) SubscribeToX509SVIDs(ctx context.Context, w Workload) (*X509SVIDStream, error) {
	if err := w.validate(); err != nil {
		return nil, err
	}
	req := &delegatedv1.SubscribeToX509SVIDsRequest{Selectors: selectorsToProto(w.Selectors), Pid: int32(w.PID)}
	stream, err := c.delegated.SubscribeToX509SVIDs(ctx, req)
	if err != nil {
		return nil, agentError(c.socket, "SubscribeToX509SVIDs", err)
	}
	return &X509SVIDStream{socket: c.socket, stream: stream}, nil
}

// Recv waits for the next update. Errors from the agent (refusal included)
// surface here, mapped to ErrNotAuthorized, ErrAgentUnavailable, ...
func (s *X509SVIDStream) Recv() (X509SVIDUpdate, error) {
	resp, err := s.stream.Recv()
	if err != nil {
		return X509SVIDUpdate{}, agentError(s.socket, "SubscribeToX509SVIDs", err)
	}
	return svidUpdateFromProto(resp)
}

// X509BundleStream is an open SubscribeToX509Bundles stream.
type X509BundleStream struct {
	socket string
	stream grpc.ServerStreamingClient[delegatedv1.SubscribeToX509BundlesResponse]
}

// SubscribeToX509Bundles opens a stream of every X.509 bundle the agent
// tracks: its own trust domain's and the federated ones. Each message is
// the full set.
func (c *Client) SubscribeToX509Bundles(ctx context.Context) (*X509BundleStream, error) {
	stream, err := c.delegated.SubscribeToX509Bundles(ctx, &delegatedv1.SubscribeToX509BundlesRequest{})
	if err != nil {
		return nil, agentError(c.socket, "SubscribeToX509Bundles", err)
	}
	return &X509BundleStream{socket: c.socket, stream: stream}, nil
}

// Recv waits for the next full set of bundles.
func (s *X509BundleStream) Recv() (*x509bundle.Set, error) {
	resp, err := s.stream.Recv()
	if err != nil {
		return nil, agentError(s.socket, "SubscribeToX509Bundles", err)
	}
	return bundlesFromProto(resp.GetCaCertificates())
}
