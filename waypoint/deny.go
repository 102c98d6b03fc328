package waypoint

import (
	"io"
	"net/http"
	"strconv"
	"strings"
)

// DeniedBody is what a denied HTTP request receives, as Envoy's RBAC
// filter answers.
const DeniedBody = "RBAC: access denied"

// gRPC status codes the waypoint answers with itself.
const (
	grpcPermissionDenied = 7
	grpcUnavailable      = 14
	grpcUnauthenticated  = 16
	grpcUnimplemented    = 12
	grpcInternal         = 13
)

// isGRPC reports a gRPC request (content-type application/grpc, or
// application/grpc+proto and the like).
func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// deny answers a request that policy refused: 403 with DeniedBody, or,
// for gRPC, PERMISSION_DENIED in trailers-only form (HTTP 200, the status
// in the only HEADERS frame).
func deny(rw http.ResponseWriter, grpc bool) {
	if grpc {
		grpcStatus(rw, grpcPermissionDenied, DeniedBody)
		return
	}
	plain(rw, http.StatusForbidden, DeniedBody)
}

// unavailable answers a request that could not be sent upstream: 503, or
// gRPC UNAVAILABLE.
func unavailable(rw http.ResponseWriter, grpc bool) {
	if grpc {
		grpcStatus(rw, grpcUnavailable, "no healthy upstream")
		return
	}
	plain(rw, http.StatusServiceUnavailable, "no healthy upstream")
}

// respond is the waypoint's own answer: status and body, or for gRPC the
// code and message.
func respond(rw http.ResponseWriter, grpc bool, status, code int, msg string) {
	if grpc {
		grpcStatus(rw, code, msg)
		return
	}
	plain(rw, status, msg)
}

func plain(rw http.ResponseWriter, status int, body string) {
	h := rw.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	rw.WriteHeader(status)
	io.WriteString(rw, body)
}

func grpcStatus(rw http.ResponseWriter, code int, msg string) {
	h := rw.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", msg) // printable ASCII without %: needs no percent-encoding
	rw.WriteHeader(http.StatusOK)
}
