package xds

import (
	"cmp"
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// subscriber is one stream's view of a proxy.
type subscriber struct {
	proxy Proxy
	wake  chan struct{}
	// types holds, per type the proxy subscribed to (Address, bundle
	// revisions), what it holds and awaits, in the order it subscribed.
	types []*subscription
}

// subscription is one type on one stream.
//
// Invariants: acked is exactly what the proxy holds of the type (its
// initial versions, then every ACKed response applied); at most one
// response of the type is unanswered (pending), so an ACK or NACK always
// refers to it.
type subscription struct {
	typeURL string
	acked   map[string]string // resource name -> version the proxy holds
	pending *inflight
	sent    bool   // the first response has gone out
	nacked  uint64 // the version last refused; not resent until it moves
	refused bool
	// demanded are the names the proxy subscribed to (on demand, not the
	// wildcard): address keys and resource names (scope.go); unanswered
	// those subscribed since the last response, which the next answers
	// (Resource.aliases, or removed_resources for what stands for nothing).
	demanded   map[string]bool
	unanswered []string
	// scope is a ztunnel's scope as of state version scopeVersion and the
	// names demanded then (scopeStale once they change): a wake-up for
	// another type (a bundle revision) does not recompute it.
	scope        map[string]*resource
	scopeVersion uint64
	scopeStale   bool
}

// inflight is a response awaiting its ACK: what the proxy will hold if it
// accepts it.
type inflight struct {
	nonce   string
	version uint64
	partial bool // a ztunnel's own workloads only: it does not hold version yet
	set     map[string]string
	removed []string
}

// knownTypes are the types the stream carries.
var knownTypes = map[string]bool{wire.TypeURL: true, wire.BundleTypeURL: true}

func (sub *subscriber) subscription(typeURL string) *subscription {
	for _, t := range sub.types {
		if t.typeURL == typeURL {
			return t
		}
	}
	return nil
}

func (sub *subscriber) wakeUp() {
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// DeltaAggregatedResources serves one proxy's stream: authenticate it,
// then answer its requests and push state changes, one response at a time.
func (s *Server) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	proxy, err := s.authenticate(stream.Context())
	if err != nil {
		s.log.Warn("refused a subscriber", "error", err)
		return err
	}
	log := s.log.With("proxy", proxy.ID.String())
	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	s.streams.Add(1)
	go func() { defer s.streams.Done(); receive(stream, reqs, recvErr) }()
	sub := &subscriber{proxy: proxy, wake: make(chan struct{}, 1)}
	// Wait for the first request: it names the proxy's node, says what it
	// subscribes to and what it already holds.
	var first *discoveryv3.DeltaDiscoveryRequest
	for first == nil {
		select {
		case <-stream.Context().Done(): // receive may end on this without a word
			return stream.Context().Err()
		case err := <-recvErr:
			return streamEnd(err)
		case req := <-reqs:
			if knownTypes[req.GetTypeUrl()] {
				first = req
			}
		}
	}
	if err := proxy.checkNode(first.GetNode()); err != nil {
		log.Warn("refused a subscriber", "error", err)
		return err
	}
	if err := s.waitReady(stream.Context(), recvErr); err != nil {
		return err
	}
	s.attach(sub)
	defer s.detach(sub)
	log.Info("proxy connected", "kind", proxy.Kind, "node", proxy.Node)
	if err := s.handle(stream, sub, first); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done(): // receive may end on this without a word
			log.Info("stream ended", "error", stream.Context().Err())
			return stream.Context().Err()
		case err := <-recvErr:
			log.Info("stream ended", "error", err)
			return streamEnd(err)
		case req := <-reqs:
			if err := s.handle(stream, sub, req); err != nil {
				return err
			}
		case <-sub.wake:
			if err := s.push(stream, sub); err != nil {
				return err
			}
		}
	}
}

// waitReady returns once the server has a state: a controller just
// started has none until it has listed the cluster, and the proxy keeps
// what it holds until then (requests that come meanwhile wait in
// receive). It returns the stream's end if that comes first.
func (s *Server) waitReady(ctx context.Context, recvErr <-chan error) error {
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case err := <-recvErr:
		return streamEnd(err)
	}
}

// receive forwards requests until the stream ends, which it does when
// the handler returns. When the stream's context ends while a request
// waits to be handed over, it returns without sending an error: the
// handler watches the context too.
func receive(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, reqs chan<- *discoveryv3.DeltaDiscoveryRequest, errc chan<- error) {
	for {
		req, err := stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		select {
		case reqs <- req:
		case <-stream.Context().Done():
			return
		}
	}
}

func streamEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (s *Server) attach(sub *subscriber) {
	s.record(sub.proxy, func(st *ProxyStatus) { st.Streams++ })
	s.mu.Lock()
	s.subscribers[sub] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) detach(sub *subscriber) {
	s.mu.Lock()
	delete(s.subscribers, sub)
	s.mu.Unlock()
	s.record(sub.proxy, func(st *ProxyStatus) { st.Streams-- })
}

// handle takes one request: a type's first (its subscription, with the
// versions the proxy holds), names subscribed to or unsubscribed from,
// or an ACK or NACK of the type's pending response (a stale nonce is
// ignored); then it pushes what the proxy still lacks. Requests for other
// types are ignored. Names count for the Address type only; the wildcard
// is every proxy's in any case (what it stands for is scope.go's).
func (s *Server) handle(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, sub *subscriber, req *discoveryv3.DeltaDiscoveryRequest) error {
	if !knownTypes[req.GetTypeUrl()] {
		s.log.Debug("ignored a request for another type", "proxy", sub.proxy.ID.String(), "type", req.GetTypeUrl())
		return nil
	}
	if err := sub.proxy.checkNode(req.GetNode()); err != nil {
		s.log.Warn("refused a request", "error", err)
		return err // any request naming a node names the SVID's
	}
	t := sub.subscription(req.GetTypeUrl())
	if t == nil {
		t = &subscription{typeURL: req.GetTypeUrl(), acked: maps.Clone(req.GetInitialResourceVersions())}
		if t.acked == nil {
			t.acked = map[string]string{}
		}
		sub.types = append(sub.types, t)
		s.log.Info("proxy subscribed", "proxy", sub.proxy.ID.String(), "type", t.typeURL, "held", len(t.acked))
	}
	if t.typeURL == wire.TypeURL {
		if err := t.subscribe(req); err != nil {
			s.log.Warn("refused a subscription", "proxy", sub.proxy.ID.String(), "error", err)
			return err
		}
		n := len(t.demanded)
		s.record(sub.proxy, func(st *ProxyStatus) { st.Subscribed = n })
	}
	if p := t.pending; p != nil && req.GetResponseNonce() == p.nonce {
		t.pending = nil
		if detail := req.GetErrorDetail(); detail != nil {
			s.nack(sub, t, p, detail.GetMessage())
		} else {
			s.ack(sub, t, p)
		}
	}
	return s.push(stream, sub)
}

// subscribe takes the names req subscribes to and unsubscribes from.
func (t *subscription) subscribe(req *discoveryv3.DeltaDiscoveryRequest) error {
	for _, name := range req.GetResourceNamesUnsubscribe() {
		delete(t.demanded, name)
	}
	for _, name := range req.GetResourceNamesSubscribe() {
		if name == "*" {
			continue
		}
		if t.demanded == nil {
			t.demanded = map[string]bool{}
		}
		if !t.demanded[name] && len(t.demanded) >= maxDemanded {
			return status.Errorf(codes.ResourceExhausted, "xds: a stream subscribes to at most %d names", maxDemanded)
		}
		t.demanded[name] = true
		t.unanswered = append(t.unanswered, name)
	}
	t.scopeStale = t.scopeStale || len(req.GetResourceNamesSubscribe())+len(req.GetResourceNamesUnsubscribe()) > 0
	return nil
}

// ztunnelScope is what the ztunnel of node holds of the state at version
// with resources all (scope.go), computed again only when either moved.
func (t *subscription) ztunnelScope(index *scopeIndex, all map[string]*resource, version uint64, node string) map[string]*resource {
	if t.scope == nil || t.scopeStale || t.scopeVersion != version {
		t.scope, t.scopeVersion, t.scopeStale = index.ztunnelScope(all, node, t.demanded), version, false
	}
	return t.scope
}

func (s *Server) ack(sub *subscriber, t *subscription, p *inflight) {
	for _, name := range p.removed {
		delete(t.acked, name)
	}
	maps.Copy(t.acked, p.set)
	if p.partial {
		return
	}
	now := time.Now()
	if t.typeURL == wire.BundleTypeURL {
		held := maps.Clone(t.acked)
		s.record(sub.proxy, func(st *ProxyStatus) { st.Bundles, st.BundlesAckedAt = held, now })
		return
	}
	s.record(sub.proxy, func(st *ProxyStatus) { st.AckedVersion, st.AckedAt = formatVersion(p.version), now })
}

// nack leaves the proxy where it was: it kept its last good state.
func (s *Server) nack(sub *subscriber, t *subscription, p *inflight, reason string) {
	t.nacked, t.refused = p.version, true
	n := &NACK{Type: t.typeURL, Version: formatVersion(p.version), Nonce: p.nonce, Reason: reason, At: time.Now()}
	s.log.Error("proxy refused a response; it keeps what it held, and this version is not resent until it changes",
		"proxy", sub.proxy.ID.String(), "type", t.typeURL, "version", n.Version, "reason", reason)
	s.record(sub.proxy, func(st *ProxyStatus) { st.LastNACK = n })
}

// push sends, for each type the proxy subscribed to, what it lacks.
func (s *Server) push(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, sub *subscriber) error {
	for _, t := range sub.types {
		var err error
		version := s.versionOf(t)
		if t.held(version) {
			// Nothing goes out: do not work out the scope, which costs a
			// pass over every name subscribed (requests that come in a
			// burst, after a controller's start, are answered together
			// once the response in flight is ACKed).
			continue
		}
		if t.typeURL == wire.BundleTypeURL {
			version, resources := s.currentBundles(sub.proxy)
			err = s.pushType(stream, sub, t, version, resources, nil)
		} else {
			version, all, index := s.current()
			resources := all
			if sub.proxy.Kind == Ztunnel {
				resources = t.ztunnelScope(index, all, version, sub.proxy.Node)
			}
			err = s.pushType(stream, sub, t, version, resources, func(name string) (string, bool) {
				r, ok := index.resolve(all, name)
				return r, ok && resources[r] != nil
			})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// held: nothing of t goes out at version: a response awaits its ACK, or
// the proxy refused this very version.
func (t *subscription) held(version uint64) bool {
	return t.pending != nil || (t.refused && version == t.nacked)
}

// versionOf is the current version of t's type.
func (s *Server) versionOf(t *subscription) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.typeURL == wire.BundleTypeURL {
		return s.bundleVersion
	}
	return s.version
}

// pushType sends what the proxy lacks of one type, unless a response is
// awaiting its ACK, the proxy refused this very version, or it lacks
// nothing and has no subscription to answer (the first response goes out
// even empty: it tells the proxy it is in sync). resolve, for a type
// taking names, says which resource a name stands for.
func (s *Server) pushType(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, sub *subscriber, t *subscription, version uint64, resources map[string]*resource, resolve func(string) (string, bool)) error {
	if t.held(version) {
		return nil
	}
	add, removed, partial := sub.diff(t.acked, resources)
	answer := len(t.unanswered) > 0 && !partial
	if len(add) == 0 && len(removed) == 0 && t.sent && !answer {
		return nil
	}
	var aliases map[string][]string
	if answer {
		add, removed, aliases = t.answer(add, removed, resources, resolve)
	}
	resp := &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl: t.typeURL, SystemVersionInfo: formatVersion(version),
		Nonce: strconv.FormatUint(s.nonces.Add(1), 36),
	}
	if partial {
		resp.SystemVersionInfo = "" // the proxy holds no whole version until the rest arrives
	}
	resp.RemovedResources = removed
	p := &inflight{nonce: resp.Nonce, version: version, partial: partial, set: make(map[string]string, len(add)), removed: removed}
	for _, r := range add {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: r.body, Aliases: aliases[r.name]})
		p.set[r.name] = r.version
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	t.pending, t.sent, t.refused = p, true, false
	if t.typeURL != wire.TypeURL {
		return nil // the push statistics are the state's
	}
	size := proto.Size(resp)
	s.record(sub.proxy, func(st *ProxyStatus) {
		st.LastPush = Push{Version: resp.SystemVersionInfo, Nonce: resp.Nonce, Resources: len(add), Removed: len(removed), Bytes: size}
		st.TotalBytes += int64(size)
	})
	return nil
}

// answer answers the names subscribed since the last response, as delta
// xDS answers a subscription by another name than a resource's: the
// resource a name stands for goes out (again, if the proxy holds it
// already) with the name among its aliases; a name that stands for
// nothing in the proxy's scope is listed as removed.
func (t *subscription) answer(add []*resource, removed []string, resources map[string]*resource, resolve func(string) (string, bool)) ([]*resource, []string, map[string][]string) {
	aliases := map[string][]string{}
	sending := make(map[string]bool, len(add))
	for _, r := range add {
		sending[r.name] = true
	}
	for _, name := range t.unanswered {
		r, ok := resolve(name)
		switch {
		case !ok:
			if !slices.Contains(removed, name) {
				removed = append(removed, name)
			}
		case r == name: // a resource's own name: the resource is the answer
			if !sending[r] {
				add, sending[r] = append(add, resources[r]), true
			}
		default:
			if !slices.Contains(aliases[r], name) {
				aliases[r] = append(aliases[r], name)
			}
			if !sending[r] {
				add, sending[r] = append(add, resources[r]), true
			}
		}
	}
	t.unanswered = nil
	return add, removed, aliases
}

// diff is what the proxy lacks: resources it does not hold at their
// current version, and names it holds that are gone. A ztunnel that holds
// nothing is sent its own node's workloads first, alone, and the rest
// once it has ACKed them (partial says this response is such a first
// part). Within a response a ztunnel's own workloads
// come first, then services, then other workloads, each by name.
func (sub *subscriber) diff(acked map[string]string, resources map[string]*resource) (add []*resource, removed []string, partial bool) {
	for name, r := range resources {
		if acked[name] != r.version {
			add = append(add, r)
		}
	}
	for name := range acked {
		if _, ok := resources[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(removed)
	rank := func(r *resource) int {
		switch {
		case sub.proxy.Kind == Ztunnel && !r.service && r.node == sub.proxy.Node:
			return 0
		case r.service:
			return 1
		}
		return 2
	}
	slices.SortFunc(add, func(a, b *resource) int { return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a.name, b.name)) })
	if len(acked) == 0 && len(add) > 0 && rank(add[0]) == 0 {
		own := 0
		for own < len(add) && rank(add[own]) == 0 {
			own++
		}
		partial = own < len(add)
		add = add[:own]
	}
	return add, removed, partial
}
