package xds

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/regomesh/regomesh/ztunnel/state"
)

// ClientConfig is a proxy's connection to the controller.
type ClientConfig struct {
	// Addr is the controller's host:port.
	Addr string
	// SVID is the proxy's own identity, presented to the controller: a
	// ztunnel's is spiffe://<trust domain>/regomesh/ztunnel/<node>.
	SVID x509svid.Source
	// Bundle verifies the controller's certificate.
	Bundle x509bundle.Source
	// Controller is the SPIFFE ID the controller must present.
	Controller spiffeid.ID
	// Node is a ztunnel's node, which it subscribes for; empty for a
	// waypoint.
	Node string
	// TrustDomain fills workloads that name none; default "cluster.local".
	TrustDomain string
	// Apply receives every state the stream brings, whole: the same
	// function a local-config watcher feeds.
	Apply func(*state.Snapshot)
	// Bundles, if set, receives the revisions of the policy bundles the
	// proxy reads (bundle name, such as MeshBundle, to .manifest
	// revision) whenever the controller says they changed: a bundle
	// downloader can fetch at once, or report how far behind it is. It
	// is called on the stream's goroutine and must not block.
	Bundles func(map[string]string)
	// Logger; default slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between reconnections
	// (doubling, jittered); default 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
}

// Client holds the state the stream has brought and keeps it while the
// controller is away.
//
// Invariant: held is exactly the state last handed to Apply (and ACKed);
// a response that cannot be applied whole changes nothing.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	mu      sync.Mutex
	held    map[string]heldResource
	version string
	bundles map[string]string // bundle name -> revision, as last ACKed
	lastErr error             // why the last stream broke
	synced  chan struct{}     // closed at the first response applied
	snap    *state.Snapshot   // the state last applied
	// demands are the addresses subscribed to on demand (ondemand.go),
	// by address key: answered, or awaiting their answer. misses holds
	// the key of each that stands for nothing, once, in the order they
	// became misses, oldest first: exactly the demands whose miss
	// element is set (a key found again leaves it, and re-enters at the
	// back if it becomes a miss again).
	demands map[string]*demand
	misses  list.List
	// awaiting counts the demands not yet answered (MaxDemandsAwaiting).
	awaiting int
	// live is true from the first state response applied on the current
	// stream until it ends; liveCh is closed while live, and a new one
	// made when the stream ends.
	live   bool
	liveCh chan struct{}
	// out is the current stream's outbox, nil between streams. Every
	// request goes out through it, and one that tells the controller of
	// a change to demands is posted under mu with the change itself; the
	// outbox's one sender sends in the order posted. So for any address
	// the controller hears of its subscriptions and unsubscriptions in
	// the order demands changed: a miss evicted and demanded again at
	// once is unsubscribed, then subscribed (sent the other way round,
	// the controller would drop the new subscription, and the demand
	// wait until the stream restarted).
	//
	// mu is the client's one lock, and nothing waits on the stream while
	// holding it: Demand and the receiving loop only post, and the
	// sender holds mu only to take the queue. The receiving loop never
	// waits for the controller to read a request, so the controller's
	// responses always drain, and a controller that reads requests
	// between its sends (ours does) always comes back to them. The queue
	// holds what it has not read yet: an ACK per response, a request per
	// demand made or dropped.
	out *outbox
}

// outbox holds one stream's requests until its sender sends them: queue,
// guarded by Client.mu, in the order posted; ready holds a token while
// queue may hold requests.
type outbox struct {
	queue []*discoveryv3.DeltaDiscoveryRequest
	ready chan struct{}
}

func newOutbox() *outbox { return &outbox{ready: make(chan struct{}, 1)} }

type heldResource struct {
	version string
	Resource
}

// NewClient returns a client holding no state.
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Addr == "":
		return nil, errors.New("xds: the controller's address is required")
	case cfg.SVID == nil || cfg.Bundle == nil:
		return nil, errors.New("xds: an SVID and a trust bundle are required: the controller accepts proxies by their SVIDs")
	case cfg.Controller.IsZero():
		return nil, errors.New("xds: the controller's SPIFFE ID is required")
	case cfg.Apply == nil:
		return nil, errors.New("xds: ClientConfig.Apply is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.TrustDomain = cmp.Or(cfg.TrustDomain, "cluster.local")
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, 500*time.Millisecond)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, 30*time.Second)
	return &Client{cfg: cfg, log: cfg.Logger.With("component", "xds", "controller", cfg.Addr), held: map[string]heldResource{}, synced: make(chan struct{}), demands: map[string]*demand{}, liveCh: make(chan struct{})}, nil
}

// Synced is closed once the first response from the controller has been
// applied.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Version is the system version of the state held, "" before the first.
func (c *Client) Version() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Bundles are the current revisions of the policy bundles this proxy
// reads, by bundle name (MeshBundle, WaypointBundle), as the controller
// last said: empty before it has, or with a controller that does not
// send them.
func (c *Client) Bundles() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.bundles)
}

// Start runs the client in the background and waits up to timeout for
// the first state; stop ends it and waits for it to end.
func (c *Client) Start(ctx context.Context, timeout time.Duration) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	stop = func() { cancel(); <-done }
	select {
	case <-c.synced:
		return stop, nil
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	stop()
	c.mu.Lock()
	last := c.lastErr
	c.mu.Unlock()
	if last == nil {
		// No stream broke: the connection hangs, or the stream stood
		// and nothing came on it (a controller that has not listed the
		// cluster yet answers nothing).
		return nil, fmt.Errorf("xds: no state from the controller at %s within %s, and no error: it did not answer the connection, or has not sent its first state yet (a controller answers nothing before it has listed the cluster: its /healthz/ready says when it has)",
			c.cfg.Addr, timeout)
	}
	return nil, fmt.Errorf("xds: no state from the controller at %s within %s (last error: %v): is it running and reachable, and does it accept this proxy's SVID (%s)?",
		c.cfg.Addr, timeout, last, c.svidID())
}

func (c *Client) svidID() string {
	svid, err := c.cfg.SVID.GetX509SVID()
	if err != nil {
		return err.Error()
	}
	return svid.ID.String()
}

// Run streams the state until ctx is done, reconnecting with backoff when
// the stream breaks; the state held stays in force meanwhile.
func (c *Client) Run(ctx context.Context) error {
	tlsConfig := tlsconfig.MTLSClientConfig(c.cfg.SVID, c.cfg.Bundle, tlsconfig.AuthorizeID(c.cfg.Controller))
	conn, err := grpc.NewClient(c.cfg.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}))
	if err != nil {
		return fmt.Errorf("xds: controller %s: %w", c.cfg.Addr, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	wait := c.cfg.MinBackoff
	for {
		applied, err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		if applied {
			wait = c.cfg.MinBackoff
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		delay := wait/2 + rand.N(wait/2+1)
		c.log.Warn("state stream broke; the last state stays in force until it resumes", "error", err, "retry_in", delay)
		wait = min(2*wait, c.cfg.MaxBackoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// stream runs one stream: subscribe with the versions held, then apply
// and answer each response. It reports whether any response was applied.
func (c *Client) stream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (applied bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	out := newOutbox()
	sent := make(chan struct{})
	go func() { defer close(sent); c.sendPosted(ctx, out, s.Send) }()
	defer func() {
		c.mu.Lock()
		c.out = nil
		if c.live {
			c.live, c.liveCh = false, make(chan struct{})
		}
		c.mu.Unlock()
		cancel() // ends a Send the controller is not reading
		<-sent
	}()
	// The subscription goes first, and names every demand made until
	// out is published; those made after post their own.
	c.mu.Lock()
	c.out = out
	for _, req := range c.subscribe() {
		c.post(req)
	}
	c.mu.Unlock()
	for {
		resp, err := s.Recv()
		if err != nil {
			return applied, err
		}
		ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if resp.GetTypeUrl() == BundleTypeURL {
			err = c.applyBundles(resp)
		} else {
			if err = c.apply(resp); err == nil {
				applied = true
			}
			c.answered(resp, err)
			if err == nil {
				c.setLive()
			}
		}
		if err != nil {
			c.log.Error("refused a response of the controller; what it replaces stays in force", "type", resp.GetTypeUrl(), "version", resp.GetSystemVersionInfo(), "error", err)
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		}
		c.mu.Lock()
		c.post(ack)
		c.mu.Unlock()
	}
}

// post, called with c.mu held, queues req for the current stream's
// sender, after every request posted before it. Between streams it is
// dropped: the next stream's first request subscribes to every demand.
func (c *Client) post(req *discoveryv3.DeltaDiscoveryRequest) {
	if c.out == nil {
		return
	}
	c.out.queue = append(c.out.queue, req)
	select {
	case c.out.ready <- struct{}{}:
	default:
	}
}

// sendPosted sends out's requests in the order posted, one at a time as
// gRPC requires, until ctx ends or a send fails: gRPC has then ended the
// stream, and its Recv says why.
func (c *Client) sendPosted(ctx context.Context, out *outbox, send func(*discoveryv3.DeltaDiscoveryRequest) error) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-out.ready:
		}
		c.mu.Lock()
		reqs := out.queue
		out.queue = nil
		c.mu.Unlock()
		for _, req := range reqs {
			if send(req) != nil {
				return
			}
		}
	}
}

// subscribe, called with c.mu held, is the stream's first requests: type Address (the wildcard,
// which the controller reads as this proxy's scope, and the addresses
// demanded), then every bundle revision, each with the versions already
// held, so a reconnection is sent only what changed. A controller that
// does not know the bundle type ignores its request.
func (c *Client) subscribe() []*discoveryv3.DeltaDiscoveryRequest {
	node := &corev3.Node{Id: c.cfg.Node}
	if c.cfg.Node != "" {
		node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{NodeMetadata: structpb.NewStringValue(c.cfg.Node)}}
	}
	versions := make(map[string]string, len(c.held))
	for name, h := range c.held {
		versions[name] = h.version
	}
	names := []string{"*"}
	for _, key := range slices.Sorted(maps.Keys(c.demands)) {
		names = append(names, key)
	}
	return []*discoveryv3.DeltaDiscoveryRequest{
		{Node: node, TypeUrl: TypeURL, ResourceNamesSubscribe: names, InitialResourceVersions: versions},
		{TypeUrl: BundleTypeURL, ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: maps.Clone(c.bundles)},
	}
}

// applyBundles takes a response of bundle revisions whole, or not at all.
func (c *Client) applyBundles(resp *discoveryv3.DeltaDiscoveryResponse) error {
	changes := make(map[string]string, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		rev, err := DecodeBundleRevision(r.GetName(), r.GetResource())
		if err != nil {
			return fmt.Errorf("xds: %w", err)
		}
		changes[r.GetName()] = rev
	}
	c.mu.Lock()
	next := maps.Clone(c.bundles)
	if next == nil {
		next = map[string]string{}
	}
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
	}
	maps.Copy(next, changes)
	changed := !maps.Equal(next, c.bundles)
	c.bundles = next
	c.mu.Unlock()
	if changed && c.cfg.Bundles != nil {
		c.cfg.Bundles(maps.Clone(next))
	}
	return nil
}

// setLive marks the stream live: its state answers for the misses
// subscribed.
func (c *Client) setLive() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live {
		c.live = true
		close(c.liveCh)
	}
}

// apply converts a response and applies it whole, or not at all.
func (c *Client) apply(resp *discoveryv3.DeltaDiscoveryResponse) error {
	if resp.GetTypeUrl() != TypeURL {
		return fmt.Errorf("xds: type %q is not %s", resp.GetTypeUrl(), TypeURL)
	}
	changes, err := c.decode(resp)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A resource sent again at the version held (the answer to a
	// subscription), or a name removed that is not held (an address that
	// stands for nothing), changes nothing.
	maps.DeleteFunc(changes, func(name string, h heldResource) bool {
		held, ok := c.held[name]
		return ok && held.version == h.version
	})
	var removed []string
	for _, name := range resp.GetRemovedResources() {
		if _, ok := c.held[name]; ok {
			removed = append(removed, name)
		}
	}
	if len(changes) == 0 && len(removed) == 0 && c.version != "" {
		c.version = resp.GetSystemVersionInfo()
		return nil // nothing changed: the proxy's state and its connections stay as they are
	}
	next := make(map[string]heldResource, len(c.held)+len(changes))
	for name, h := range c.held {
		next[name] = h
	}
	for _, name := range removed {
		delete(next, name)
	}
	for name, h := range changes {
		next[name] = h
	}
	snap, err := snapshot(next)
	if err != nil {
		return err
	}
	c.held, c.version, c.snap = next, resp.GetSystemVersionInfo(), snap
	c.cfg.Apply(snap)
	select {
	case <-c.synced:
	default:
		close(c.synced)
	}
	return nil
}

// decode converts every resource of resp, refusing one that does not
// convert or whose name is not its key.
func (c *Client) decode(resp *discoveryv3.DeltaDiscoveryResponse) (map[string]heldResource, error) {
	changes := make(map[string]heldResource, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		var addr workloadapi.Address
		if err := r.GetResource().UnmarshalTo(&addr); err != nil {
			return nil, fmt.Errorf("xds: resource %s: %w", r.GetName(), err)
		}
		res, err := Decode(&addr, c.cfg.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("xds: resource %s: %w", r.GetName(), err)
		}
		if key := res.name(); key != r.GetName() {
			return nil, fmt.Errorf("xds: resource %s holds %s", r.GetName(), key)
		}
		if _, dup := changes[r.GetName()]; dup {
			return nil, fmt.Errorf("xds: resource %s appears twice", r.GetName())
		}
		changes[r.GetName()] = heldResource{version: r.GetVersion(), Resource: res}
	}
	return changes, nil
}

func (r Resource) name() string {
	if r.Workload != nil {
		return WorkloadName(r.Workload)
	}
	return ServiceName(r.Service)
}

// snapshot builds the state of held, workloads and services by name.
func snapshot(held map[string]heldResource) (*state.Snapshot, error) {
	var workloads []*state.Workload
	var services []*state.Service
	for _, h := range held {
		if h.Workload != nil {
			workloads = append(workloads, h.Workload)
		} else {
			services = append(services, h.Service)
		}
	}
	slices.SortFunc(workloads, func(a, b *state.Workload) int { return cmp.Compare(a.UID, b.UID) })
	slices.SortFunc(services, func(a, b *state.Service) int { return cmp.Compare(ServiceName(a), ServiceName(b)) })
	snap, err := state.NewSnapshot(workloads, services)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return snap, nil
}
