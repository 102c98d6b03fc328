package hbone

import "time"

// Defaults, tuned for bulk transfer as Istio's ztunnel is.
const (
	DefaultStreamWindow      = 4 << 20  // receive window of a stream
	DefaultConnWindow        = 16 << 20 // receive window of a connection
	DefaultMaxFrameSize      = 1 << 20  // largest DATA frame accepted
	DefaultMaxStreamsPerConn = 100      // streams a client opens on one connection
	DefaultPingInterval      = 10 * time.Second
	DefaultPingTimeout       = 5 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	// DefaultServerIdleTimeout is longer than a Pool's, so the client,
	// which knows when it is done, usually closes first.
	DefaultServerIdleTimeout = 10 * time.Minute
	DefaultHandshakeTimeout  = 10 * time.Second
)

// ConnConfig tunes the HTTP/2 connections of a Server or a Pool. The zero
// value means every default.
type ConnConfig struct {
	// StreamWindow is how many bytes the peer may send on one stream before
	// it is read (HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE). Default 4 MiB.
	StreamWindow int32

	// ConnWindow is how many bytes the peer may send on the connection, all
	// streams together, before they are read. Default 16 MiB; at least 64 KiB.
	ConnWindow int32

	// MaxFrameSize is the largest frame the peer may send
	// (SETTINGS_MAX_FRAME_SIZE, 16 KiB to 16 MiB - 1). Default 1 MiB.
	MaxFrameSize uint32

	// PingInterval: a connection that has received nothing for this long is
	// sent an HTTP/2 PING. Default 10s; negative disables PINGs.
	PingInterval time.Duration

	// PingTimeout: a PING unanswered for this long declares the peer dead;
	// the connection is closed and its streams fail. Default 5s.
	PingTimeout time.Duration

	// IdleTimeout closes a connection that has carried no stream for this
	// long (a Server sends GOAWAY first). Default 5 minutes for a Pool, 10
	// for a Server, so an idle client cannot hold a Server's connection
	// slots and window budget for ever; negative means never.
	IdleTimeout time.Duration

	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface and
	// SETTINGS exchange. Default 10s.
	HandshakeTimeout time.Duration

	// Limits bound what clients can make a Server hold: handshakes in
	// progress, connections in all and per client identity, and receive
	// window bytes. A Pool ignores them. The zero value means DefaultLimits.
	Limits Limits

	// Node, if set, bounds the totals of every Server that shares it, on
	// top of each one's Limits (ztunnel: one for all its pods' Servers).
	// A Pool ignores it.
	Node *NodeLimits

	// OnRefuse, if set, is called each time a Server refuses a client
	// something under Limits or Node, or cuts off a client that resets
	// streams faster than their handlers end. It must not block.
	OnRefuse func(Refusal)
}

// withDefaults fills zero fields; idle is the side's default idle timeout.
func (c ConnConfig) withDefaults(idle time.Duration) ConnConfig {
	if c.StreamWindow <= 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	if c.ConnWindow <= 0 {
		c.ConnWindow = DefaultConnWindow
	}
	c.StreamWindow = max(c.StreamWindow, 1<<10)
	c.ConnWindow = max(c.ConnWindow, initialWindow) // HTTP/2 can only grow it
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	c.MaxFrameSize = min(max(c.MaxFrameSize, 1<<14), 1<<24-1)
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = idle
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return c
}
