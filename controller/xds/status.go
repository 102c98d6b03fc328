package xds

import (
	"maps"
	"slices"
	"strings"
	"time"
)

// ProxyStatus is what the server knows of one proxy (by SPIFFE ID): the
// state version it has ACKed and the last NACK, for `regomesh status`.
// Its JSON form is what GET /debug/proxies serves (StatusReport).
type ProxyStatus struct {
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	Node string `json:"node,omitempty"`
	// Streams is how many streams the proxy has open now.
	Streams int `json:"streams"`
	// AckedVersion is the last system version the proxy ACKed; it holds
	// that state (or a later one it has not ACKed yet).
	AckedVersion string    `json:"acked_version,omitempty"`
	AckedAt      time.Time `json:"acked_at,omitzero"`
	// Bundles are the bundle revisions the proxy last ACKed, by bundle
	// name: what the stream told it is current (whether it has fetched
	// them yet is the bundle server's to see).
	Bundles map[string]string `json:"bundles,omitempty"`
	// BundlesAckedAt is when it ACKed them.
	BundlesAckedAt time.Time `json:"bundles_acked_at,omitzero"`
	// Subscribed is how many names (addresses, resources) the proxy
	// subscribed to on demand, beside what its scope always holds.
	Subscribed int `json:"subscribed"`
	// LastNACK is the last response the proxy refused, nil if none.
	LastNACK *NACK `json:"last_nack,omitempty"`
	// LastPush describes the last response of state sent; TotalBytes
	// sums them all.
	LastPush   Push  `json:"last_push"`
	TotalBytes int64 `json:"total_bytes"`
}

// NACK is a response a proxy refused, and why.
type NACK struct {
	// Type is the response's type URL: the state's or the bundles'.
	Type    string    `json:"type"`
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

// Push is one response: its version, how many resources it added or
// changed and removed, and its encoded size.
type Push struct {
	Version   string `json:"version,omitempty"`
	Nonce     string `json:"nonce,omitempty"`
	Resources int    `json:"resources"`
	Removed   int    `json:"removed"`
	Bytes     int    `json:"bytes"`
}

// Proxies lists every proxy that has subscribed since the server started,
// by SPIFFE ID.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for _, p := range s.proxies {
		c := *p
		c.Bundles = maps.Clone(p.Bundles)
		if p.LastNACK != nil {
			n := *p.LastNACK
			c.LastNACK = &n
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Proxy returns the status of the proxy with SPIFFE ID id.
func (s *Server) Proxy(id string) (ProxyStatus, bool) {
	for _, p := range s.Proxies() {
		if p.ID == id {
			return p, true
		}
	}
	return ProxyStatus{}, false
}

// record changes the status of p under the server's lock.
func (s *Server) record(p Proxy, change func(*ProxyStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.proxies[p.ID.String()]
	if !ok {
		st = &ProxyStatus{ID: p.ID.String(), Kind: p.Kind, Node: p.Node}
		s.proxies[st.ID] = st
	}
	change(st)
}
