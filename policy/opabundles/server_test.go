package opabundles

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// bundleServer is an OPA bundle server in Go: it serves one bundle at any
// path with an ETag, answers a matching If-None-Match with 304, and, in
// long-polling mode, holds such a request for the "Prefer: wait=N"
// seconds the downloader asks for, answering as soon as a new revision is
// published. It can be made to fail with a status, and records what each
// request carried.
type bundleServer struct {
	*httptest.Server
	longPoll bool

	mu       sync.Mutex
	body     []byte
	etag     string
	version  int
	status   int           // when not 0, every request gets this status
	token    string        // when set, the bearer token a request must carry
	changed  chan struct{} // closed and replaced by each publish
	requests []seenRequest // answered requests, in order
	arrived  int           // requests received, answered or not
	closed   chan struct{}
}

// seenRequest is what one request carried.
type seenRequest struct {
	ifNoneMatch, prefer, authorization string
	peer                               string // the client certificate's URI SAN, over TLS
	status                             int
}

func newBundleServer(t *testing.T, longPoll bool) *bundleServer {
	s := &bundleServer{longPoll: longPoll, changed: make(chan struct{}), closed: make(chan struct{})}
	s.Server = httptest.NewUnstartedServer(s)
	return s
}

// start serves plain HTTP until the test ends.
func (s *bundleServer) start(t *testing.T) *bundleServer {
	s.Start()
	t.Cleanup(s.close)
	return s
}

// startMTLS serves over TLS with cfg (go-spiffe's server configuration:
// httptest's StartTLS would put its own certificate first) until the test
// ends.
func (s *bundleServer) startMTLS(t *testing.T, cfg *tls.Config) *bundleServer {
	s.Listener = tls.NewListener(s.Listener, cfg)
	s.Start()
	s.URL = "https://" + s.Listener.Addr().String()
	t.Cleanup(s.close)
	return s
}

// close ends the held long polls, then the server.
func (s *bundleServer) close() {
	s.mu.Lock()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	s.mu.Unlock()
	s.Close()
}

// publish serves body as a new revision, with a new ETag.
func (s *bundleServer) publish(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version++
	s.body, s.etag = body, `"v`+strconv.Itoa(s.version)+`"`
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *bundleServer) failWith(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

func (s *bundleServer) requireToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
}

func (s *bundleServer) arrivals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.arrived
}

func (s *bundleServer) seen() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenRequest(nil), s.requests...)
}

func (s *bundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.arrived++
	s.mu.Unlock()
	seen := seenRequest{ifNoneMatch: r.Header.Get("If-None-Match"), prefer: r.Header.Get("Prefer"), authorization: r.Header.Get("Authorization")}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) > 0 {
		seen.peer = r.TLS.PeerCertificates[0].URIs[0].String()
	}
	seen.status = s.answer(w, r)
	s.mu.Lock()
	s.requests = append(s.requests, seen)
	s.mu.Unlock()
}

func (s *bundleServer) answer(w http.ResponseWriter, r *http.Request) int {
	s.mu.Lock()
	status, token, etag, changed := s.status, s.token, s.etag, s.changed
	s.mu.Unlock()
	switch {
	case status != 0:
		w.WriteHeader(status)
		return status
	case token != "" && r.Header.Get("Authorization") != "Bearer "+token:
		w.WriteHeader(http.StatusUnauthorized)
		return http.StatusUnauthorized
	case etag == "":
		w.WriteHeader(http.StatusNotFound)
		return http.StatusNotFound
	}
	if r.Header.Get("If-None-Match") == etag {
		if wait := preferredWait(r); s.longPoll && wait > 0 {
			select {
			case <-changed:
			case <-time.After(wait):
			case <-r.Context().Done():
			case <-s.closed:
			}
		}
		s.mu.Lock()
		etag = s.etag
		s.mu.Unlock()
		if r.Header.Get("If-None-Match") == etag {
			w.Header().Set("ETag", etag)
			w.WriteHeader(http.StatusNotModified)
			return http.StatusNotModified
		}
	}
	s.mu.Lock()
	body, etag := s.body, s.etag
	s.mu.Unlock()
	contentType := "application/gzip"
	if s.longPoll {
		contentType = "application/vnd.openpolicyagent.bundles" // offers long polling
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("ETag", etag)
	w.Write(body)
	return http.StatusOK
}

// preferredWait reads "Prefer: ...;wait=N" (OPA's long-polling request).
func preferredWait(r *http.Request) time.Duration {
	for _, pref := range strings.Split(r.Header.Get("Prefer"), ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(pref), "wait="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				return time.Duration(n) * time.Second
			}
		}
	}
	return 0
}
