package waypoint

import (
	"io"
	"time"

	"github.com/regomesh/regomesh/internal/jsonlines"
)

// AccessEntry is one JSON access-log line: one per request, or one per
// connection relayed as TCP. Every deny names the policy and rule.
type AccessEntry struct {
	Time          time.Time `json:"time"`
	Kind          string    `json:"kind"` // "http" or "tcp"
	Source        string    `json:"src.addr"`
	SourceID      string    `json:"src.identity,omitempty"`
	SourceWL      string    `json:"src.workload,omitempty"`
	Destination   string    `json:"dst.addr"`
	Service       string    `json:"dst.service,omitempty"`
	DestinationWL string    `json:"dst.workload,omitempty"`
	Upstream      string    `json:"upstream.addr,omitempty"`
	Route         string    `json:"route_name,omitempty"` // the HTTPRoute or VirtualService rule, "<namespace>/<name>#<index>"
	Method        string    `json:"method,omitempty"`
	Path          string    `json:"path,omitempty"`
	Host          string    `json:"host,omitempty"`
	Protocol      string    `json:"protocol,omitempty"`
	Status        int       `json:"response_code,omitempty"`
	GRPCStatus    string    `json:"grpc_status,omitempty"`
	TraceParent   string    `json:"traceparent,omitempty"`
	Decision      string    `json:"decision,omitempty"` // "allow" or "deny"
	Policy        string    `json:"policy,omitempty"`
	Rule          string    `json:"rule,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	Flags         string    `json:"response_flags,omitempty"`
	Attempts      int       `json:"attempts,omitempty"` // upstream attempts: 1, or more with retries
	Sent          int64     `json:"bytes_sent"`
	Received      int64     `json:"bytes_recv"`
	DurationMS    float64   `json:"duration_ms"`
	Error         string    `json:"error,omitempty"`
}

// AccessLog writes AccessEntry lines; safe for concurrent use, and a nil
// AccessLog discards.
type AccessLog = jsonlines.Writer[AccessEntry]

// NewAccessLog writes to w; nil w discards.
func NewAccessLog(w io.Writer) *AccessLog { return jsonlines.New[AccessEntry](w) }
