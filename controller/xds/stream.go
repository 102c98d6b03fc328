package xds

import (
	"cmp"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// subscriber is one stream's view of a proxy.
//
// Invariants: acked is exactly what the proxy holds (its initial versions,
// then every ACKed response applied); at most one response is unanswered
// (pending), so an ACK or NACK always refers to it.
type subscriber struct {
	proxy Proxy
	wake  chan struct{}

	acked   map[string]string // resource name -> version the proxy holds
	pending *inflight
	sent    bool   // the first response has gone out
	nacked  uint64 // the version last refused; not resent until it moves
	refused bool
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
	sub := &subscriber{proxy: proxy, wake: make(chan struct{}, 1), acked: map[string]string{}}
	// Wait for the first request: it says what the proxy subscribes to
	// and what it already holds.
	var first *discoveryv3.DeltaDiscoveryRequest
	for first == nil {
		select {
		case <-stream.Context().Done(): // receive may end on this without a word
			return stream.Context().Err()
		case err := <-recvErr:
			return streamEnd(err)
		case req := <-reqs:
			if req.GetTypeUrl() == wire.TypeURL {
				first = req
			}
		}
	}
	if err := proxy.checkNode(first.GetNode()); err != nil {
		log.Warn("refused a subscriber", "error", err)
		return err
	}
	s.attach(sub)
	defer s.detach(sub)
	log.Info("proxy subscribed", "kind", proxy.Kind, "node", proxy.Node, "held", len(first.GetInitialResourceVersions()))
	maps.Copy(sub.acked, first.GetInitialResourceVersions())
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

// handle takes one request: an ACK or NACK of the pending response (a
// stale nonce is ignored), then pushes what the proxy still lacks.
// Requests for other types are ignored: the stream carries Address only.
// Subscriptions are wildcard: named subscriptions are not honoured yet.
func (s *Server) handle(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, sub *subscriber, req *discoveryv3.DeltaDiscoveryRequest) error {
	if req.GetTypeUrl() != wire.TypeURL {
		s.log.Debug("ignored a request for another type", "proxy", sub.proxy.ID.String(), "type", req.GetTypeUrl())
		return nil
	}
	if p := sub.pending; p != nil && req.GetResponseNonce() == p.nonce {
		sub.pending = nil
		if detail := req.GetErrorDetail(); detail != nil {
			s.nack(sub, p, detail.GetMessage())
		} else {
			s.ack(sub, p)
		}
	}
	return s.push(stream, sub)
}

func (s *Server) ack(sub *subscriber, p *inflight) {
	for _, name := range p.removed {
		delete(sub.acked, name)
	}
	maps.Copy(sub.acked, p.set)
	if p.partial {
		return
	}
	now := time.Now()
	s.record(sub.proxy, func(st *ProxyStatus) { st.AckedVersion, st.AckedAt = formatVersion(p.version), now })
}

// nack leaves the proxy where it was: it kept its last good state.
func (s *Server) nack(sub *subscriber, p *inflight, reason string) {
	sub.nacked, sub.refused = p.version, true
	n := &NACK{Version: formatVersion(p.version), Nonce: p.nonce, Reason: reason, At: time.Now()}
	s.log.Error("proxy refused the state; it keeps its last good state, and this one is not resent until the state changes",
		"proxy", sub.proxy.ID.String(), "version", n.Version, "reason", reason)
	s.record(sub.proxy, func(st *ProxyStatus) { st.LastNACK = n })
}

// push sends what the proxy lacks, unless a response is awaiting its ACK,
// the proxy refused this very version, or it lacks nothing (the first
// response goes out even empty: it tells the proxy it is in sync).
func (s *Server) push(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, sub *subscriber) error {
	if sub.pending != nil {
		return nil
	}
	version, resources := s.current()
	if sub.refused && version == sub.nacked {
		return nil
	}
	add, removed, partial := sub.diff(resources)
	if len(add) == 0 && len(removed) == 0 && sub.sent {
		return nil
	}
	resp := &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl: wire.TypeURL, SystemVersionInfo: formatVersion(version),
		Nonce: strconv.FormatUint(s.nonces.Add(1), 36), RemovedResources: removed,
	}
	if partial {
		resp.SystemVersionInfo = "" // the proxy holds no whole version until the rest arrives
	}
	p := &inflight{nonce: resp.Nonce, version: version, partial: partial, set: make(map[string]string, len(add)), removed: removed}
	for _, r := range add {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: r.body})
		p.set[r.name] = r.version
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	sub.pending, sub.sent, sub.refused = p, true, false
	size := proto.Size(resp)
	s.record(sub.proxy, func(st *ProxyStatus) {
		st.LastPush = Push{Version: resp.SystemVersionInfo, Nonce: resp.Nonce, Resources: len(add), Removed: len(removed), Bytes: size}
		st.TotalBytes += int64(size)
	})
	return nil
}

// diff is what the proxy lacks: resources it does not hold at their
// current version, and names it holds that are gone. A ztunnel that holds
// nothing is sent its own node's workloads first, alone, and the rest
// once it has ACKed them (partial says this response is such a first
// part). Within a response a ztunnel's own workloads
// come first, then services, then other workloads, each by name.
func (sub *subscriber) diff(resources map[string]*resource) (add []*resource, removed []string, partial bool) {
	for name, r := range resources {
		if sub.acked[name] != r.version {
			add = append(add, r)
		}
	}
	for name := range sub.acked {
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
	if len(sub.acked) == 0 && len(add) > 0 && rank(add[0]) == 0 {
		own := 0
		for own < len(add) && rank(add[own]) == 0 {
			own++
		}
		partial = own < len(add)
		add = add[:own]
	}
	return add, removed, partial
}
