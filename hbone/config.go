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
	// long. Default 5 minutes for a Pool; a Server defaults to never (0 and
	// negative both mean never there) and relies on its clients and PINGs.
	IdleTimeout time.Duration

	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface and
	// SETTINGS exchange. Default 10s.
	HandshakeTimeout time.Duration
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
