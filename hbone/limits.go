package hbone

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Refusal says why a Server refused a client something: a connection, a
// handshake slot, part of a receive window. ConnConfig.OnRefuse hears of
// each one (ztunnel counts them in regomesh_hbone_refused_total).
type Refusal string

const (
	// RefusedHandshakesPerIP: a source address already had
	// Limits.HandshakesPerIP handshakes in progress; its new connection
	// was closed at once.
	RefusedHandshakesPerIP Refusal = "handshakes_per_ip"
	// RefusedHandshakes: Limits.Handshakes handshakes were in progress;
	// the oldest of them was dropped to make room for the new one.
	RefusedHandshakes Refusal = "handshakes"
	// RefusedConnsPerPeer: the client's SPIFFE ID already had
	// Limits.ConnsPerPeer connections; the new one got GOAWAY.
	RefusedConnsPerPeer Refusal = "conns_per_peer"
	// RefusedConns: Limits.Conns connections were open; the new one got
	// GOAWAY.
	RefusedConns Refusal = "conns"
	// RefusedWindow: Limits.WindowBytes was spent, so a connection got a
	// smaller receive window than ConnWindow (at least HTTP/2's 64 KiB);
	// it grows back as the budget frees.
	RefusedWindow Refusal = "window_budget"
	// RefusedRapidReset: the client opened and reset streams faster than
	// their handlers ended (CVE-2023-44487); its connection got GOAWAY
	// ENHANCE_YOUR_CALM.
	RefusedRapidReset Refusal = "rapid_reset"
)

// Limits bound what the clients of a Server can make it hold. Each field's
// zero value means its default: DefaultLimits for one Server, or
// DefaultNodeLimits for a NodeLimits shared by several.
//
// Why handshakes are capped this way: a connection holds a slot from
// Accept until its TLS and HTTP/2 handshakes are done, at most
// ConnConfig.HandshakeTimeout (10s). Refusing new connections at a full
// cap would let a few hundred bare TCP connections, renewed every 10s,
// keep every real client out. Instead, once half the slots are taken, a
// source address may hold only HandshakesPerIP of them (its next
// connection is closed at once), and at
// the overall cap the oldest handshake in progress is dropped for the
// new one: a real client finishes its handshake in milliseconds, so an
// attacker must open connections faster than that, from many addresses,
// to crowd it out, where holding them open used to suffice.
type Limits struct {
	// Handshakes bounds the connections accepted and not yet through the
	// TLS and HTTP/2 handshakes. At the bound the oldest is dropped to
	// make room. Default 128 per Server, 512 per NodeLimits.
	Handshakes int

	// HandshakesPerIP bounds the handshakes in progress from one source
	// address once half of Handshakes are in progress; over it a new
	// connection is closed at once. Default 16 per Server, 64 per
	// NodeLimits.
	HandshakesPerIP int

	// Conns bounds the established connections. Over it a new connection
	// is answered with GOAWAY and closed. Default 1024 per Server, 8192
	// per NodeLimits.
	Conns int

	// ConnsPerPeer bounds the connections of one client identity (SPIFFE
	// ID). A Pool opens one per 100 tunnels for each (source, destination)
	// pair. Default 64 per Server, 512 per NodeLimits.
	ConnsPerPeer int

	// WindowBytes bounds the receive windows of all connections together:
	// the bytes clients may send that the tunnels have not read yet, which
	// is the memory a slow or stalled reader can pin. A connection starts
	// with ConnWindow from this budget, or with what is left of it but at
	// least HTTP/2's 64 KiB, and grows back to ConnWindow as the budget
	// frees. Default 256 MiB per Server, 1 GiB per NodeLimits.
	WindowBytes int64
}

// Default limits of one Server.
var DefaultLimits = Limits{
	Handshakes: 128, HandshakesPerIP: 16, Conns: 1024, ConnsPerPeer: 64, WindowBytes: 256 << 20,
}

// Default limits of a NodeLimits.
var DefaultNodeLimits = Limits{
	Handshakes: 512, HandshakesPerIP: 64, Conns: 8192, ConnsPerPeer: 512, WindowBytes: 1 << 30,
}

func (l Limits) withDefaults(d Limits) Limits {
	if l.Handshakes <= 0 {
		l.Handshakes = d.Handshakes
	}
	if l.HandshakesPerIP <= 0 {
		l.HandshakesPerIP = d.HandshakesPerIP
	}
	if l.Conns <= 0 {
		l.Conns = d.Conns
	}
	if l.ConnsPerPeer <= 0 {
		l.ConnsPerPeer = d.ConnsPerPeer
	}
	if l.WindowBytes <= 0 {
		l.WindowBytes = d.WindowBytes
	}
	return l
}

// NodeLimits are totals shared by every Server whose ConnConfig.Node
// points to it, over and above each Server's own Limits: ztunnel runs one
// Server per pod, and one NodeLimits bounds them all together.
type NodeLimits struct {
	l *limiter
}

// NewNodeLimits returns shared limits; zero fields take DefaultNodeLimits.
func NewNodeLimits(l Limits) *NodeLimits {
	return &NodeLimits{newLimiter(l.withDefaults(DefaultNodeLimits))}
}

// limiter counts one level's handshakes, connections and window bytes:
// a Server's, or a NodeLimits'.
//
// Invariants: pending holds each admitted handshake that has neither
// finished nor been dropped, oldest first, and perIP counts them by
// address; perPeer counts established connections by client identity
// and conns is their sum; window is the receive window granted to the
// connections (a connection's HTTP/2 64 KiB may overshoot lim.WindowBytes).
type limiter struct {
	lim Limits

	mu      sync.Mutex
	pending *list.List // of *handshake
	perIP   map[netip.Addr]int
	conns   int
	perPeer map[spiffeid.ID]int

	window atomic.Int64
}

func newLimiter(l Limits) *limiter {
	return &limiter{lim: l, pending: list.New(), perIP: map[netip.Addr]int{}, perPeer: map[spiffeid.ID]int{}}
}

// handshake is one connection between Accept and the end of its HTTP/2
// handshake, in the pending list of each level that admitted it.
type handshake struct {
	nc    net.Conn
	ip    netip.Addr
	elems [2]*list.Element // by level; guarded by that level's mu
}

// admitHandshake takes a handshake slot at level i. It refuses when the
// address has too many in progress and half the slots are taken (below
// that, parallel clients behind one address are not held back); at the
// overall cap it returns the oldest handshake, which the caller drops.
func (l *limiter) admitHandshake(h *handshake, i int) (victim *handshake, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perIP[h.ip] >= l.lim.HandshakesPerIP && 2*l.pending.Len() >= l.lim.Handshakes {
		return nil, false
	}
	if l.pending.Len() >= l.lim.Handshakes {
		victim = l.pending.Front().Value.(*handshake)
		l.removeLocked(victim, i)
	}
	h.elems[i] = l.pending.PushBack(h)
	l.perIP[h.ip]++
	return victim, true
}

// endHandshake gives back h's slot at level i, if it still holds one.
func (l *limiter) endHandshake(h *handshake, i int) {
	l.mu.Lock()
	l.removeLocked(h, i)
	l.mu.Unlock()
}

func (l *limiter) removeLocked(h *handshake, i int) {
	if h.elems[i] == nil {
		return
	}
	l.pending.Remove(h.elems[i])
	h.elems[i] = nil
	if l.perIP[h.ip]--; l.perIP[h.ip] <= 0 {
		delete(l.perIP, h.ip)
	}
}

// admitConn counts a connection of peer, or says which limit refuses it.
func (l *limiter) admitConn(peer spiffeid.ID) (Refusal, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.perPeer[peer] >= l.lim.ConnsPerPeer:
		return RefusedConnsPerPeer, false
	case l.conns >= l.lim.Conns:
		return RefusedConns, false
	}
	l.perPeer[peer]++
	l.conns++
	return "", true
}

func (l *limiter) endConn(peer spiffeid.ID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns--
	if l.perPeer[peer]--; l.perPeer[peer] <= 0 {
		delete(l.perPeer, peer)
	}
}

// takeWindow grants up to want bytes of window budget.
func (l *limiter) takeWindow(want int64) int64 {
	for {
		used := l.window.Load()
		n := min(want, l.lim.WindowBytes-used)
		if n <= 0 {
			return 0
		}
		if l.window.CompareAndSwap(used, used+n) {
			return n
		}
	}
}

// levels are the limiters a Server's connection answers to: its Server's,
// then its NodeLimits' if any.
type levels []*limiter

// takeWindow grants up to want bytes that every level can spare.
func (ls levels) takeWindow(want int64) int64 {
	for i, l := range ls {
		got := l.takeWindow(want)
		if got < want {
			for _, prev := range ls[:i] {
				prev.window.Add(got - want)
			}
			want = got
		}
	}
	return want
}

// forceWindow counts n bytes at every level, over the budget if need be:
// HTTP/2 grants each connection 64 KiB before any SETTINGS.
func (ls levels) forceWindow(n int64) {
	for _, l := range ls {
		l.window.Add(n)
	}
}

func (ls levels) releaseWindow(n int64) { ls.forceWindow(-n) }
