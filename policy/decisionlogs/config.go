package decisionlogs

import (
	"fmt"
	"time"
)

// Defaults, OPA's where OPA has a bound (docs/decision-logs.md).
const (
	// DefaultUploadLimitBytes is OPA's default upload_size_limit_bytes.
	DefaultUploadLimitBytes = 32768
	// DefaultBufferLimitEvents is OPA's default buffer_size_limit_events.
	DefaultBufferLimitEvents = 10000
	// DefaultBufferLimitBytes bounds the size buffer when the configuration
	// sets no buffer_size_limit_bytes; OPA's default is unlimited, which a
	// proxy that must never run out of memory for its logs cannot offer.
	DefaultBufferLimitBytes = 32 << 20
	// minUploadLimitBytes is OPA's smallest upload limit: one small event
	// and an empty gzip stream.
	minUploadLimitBytes = 90
	// minRetryDelay is OPA's first backoff after a failed upload.
	minRetryDelay = 100 * time.Millisecond
)

// Config says where and how decision logs are shipped. It is what
// opabundles reads from an OPA configuration's decision_logs section.
type Config struct {
	// Resource is the path events are POSTed to, relative to the
	// service's URL: "/logs" unless the configuration says otherwise.
	Resource string
	// UploadLimitBytes bounds the gzip-compressed size of one upload; an
	// event that does not fit alone is dropped (reason "upload_too_large").
	// 0 means 32768.
	UploadLimitBytes int64
	// BufferLimitBytes bounds, in bytes of encoded events, what waits for
	// upload; 0 means 32 MiB unless BufferLimitEvents is set.
	BufferLimitBytes int64
	// BufferLimitEvents bounds, in events, what waits for upload (OPA's
	// buffer_type "event"); 0 means no bound by count.
	BufferLimitEvents int64
	// MinDelay and MaxDelay bound the random wait between uploads; MaxDelay
	// also caps the backoff after a failure. Zero MaxDelay means 600 s and
	// 300 s, OPA's defaults.
	MinDelay, MaxDelay time.Duration
	// MaxPerSecond caps the events taken into the buffer per second (OPA's
	// max_decisions_per_second); events over it are dropped with reason
	// "upload_rate_limited". 0 means no cap.
	MaxPerSecond float64
	// Labels are added to every event's labels, as OPA adds its configured
	// labels; an event's own label of the same name wins.
	Labels map[string]string
}

func (c Config) withDefaults() Config {
	if c.Resource == "" {
		c.Resource = "/logs"
	}
	if c.UploadLimitBytes == 0 {
		c.UploadLimitBytes = DefaultUploadLimitBytes
	}
	if c.BufferLimitBytes == 0 && c.BufferLimitEvents == 0 {
		c.BufferLimitBytes = DefaultBufferLimitBytes
	}
	if c.MaxDelay == 0 {
		c.MinDelay, c.MaxDelay = 300*time.Second, 600*time.Second
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.UploadLimitBytes < minUploadLimitBytes:
		return fmt.Errorf("decisionlogs: upload limit %d bytes is below the minimum of %d", c.UploadLimitBytes, minUploadLimitBytes)
	case c.BufferLimitBytes < 0 || c.BufferLimitEvents < 0:
		return fmt.Errorf("decisionlogs: buffer limits must not be negative")
	case c.MinDelay < 0 || c.MaxDelay < c.MinDelay:
		return fmt.Errorf("decisionlogs: delays %v to %v: want 0 <= min <= max", c.MinDelay, c.MaxDelay)
	case c.MaxPerSecond < 0:
		return fmt.Errorf("decisionlogs: max per second %v is negative", c.MaxPerSecond)
	}
	return nil
}
