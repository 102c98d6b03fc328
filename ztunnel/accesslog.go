package ztunnel

import (
	"io"
	"time"

	"github.com/regomesh/regomesh/internal/jsonlines"
)

// AccessEntry is one JSON access-log line: one per connection, written
// when it closes (or is refused). Every deny names the policy and rule.
type AccessEntry struct {
	Time          time.Time `json:"time"`
	Direction     string    `json:"direction"` // "inbound" or "outbound"
	Source        string    `json:"src.addr"`
	Destination   string    `json:"dst.addr"`
	SourceID      string    `json:"src.identity,omitempty"`
	DestinationID string    `json:"dst.identity,omitempty"`
	SourceWL      string    `json:"src.workload,omitempty"`
	DestinationWL string    `json:"dst.workload,omitempty"`
	Namespace     string    `json:"dst.namespace,omitempty"`
	Hbone         string    `json:"dst.hbone_addr,omitempty"`
	Decision      string    `json:"decision,omitempty"` // "allow" or "deny"
	Policy        string    `json:"policy,omitempty"`
	Rule          string    `json:"rule,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	Flags         Flag      `json:"response_flags,omitempty"`
	Sent          int64     `json:"bytes_sent"`
	Received      int64     `json:"bytes_recv"`
	DurationMS    float64   `json:"duration_ms"`
	Error         string    `json:"error,omitempty"`
}

// accessEntry is the report's access-log line.
func (r *report) accessEntry() AccessEntry {
	return AccessEntry{
		Time: r.start, Direction: r.direction, Source: r.src.addr, Destination: r.dst.addr,
		SourceID: r.src.principal, DestinationID: r.dst.principal, SourceWL: r.src.workload,
		DestinationWL: r.dst.workload, Namespace: r.dst.namespace, Hbone: r.hbone,
		Decision: r.decision, Policy: r.policy, Rule: r.rule, Reason: r.reason, Flags: r.flag,
		Sent: r.sent, Received: r.received, DurationMS: float64(r.duration.Microseconds()) / 1000,
		Error: r.err,
	}
}

// AccessLog writes AccessEntry lines; safe for concurrent use, and a nil
// AccessLog discards.
type AccessLog = jsonlines.Writer[AccessEntry]

// NewAccessLog writes to w; nil w discards.
func NewAccessLog(w io.Writer) *AccessLog { return jsonlines.New[AccessEntry](w) }
