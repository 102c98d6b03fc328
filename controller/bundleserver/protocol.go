package bundleserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ContentType is the media type of every bundle served: OPA's downloader
// reads it as "this server long-polls", and switches to long polling when
// its configuration asks for it (a 304 carries no media type, and OPA
// keeps the mode it is in).
const ContentType = "application/vnd.openpolicyagent.bundles"

// ServeHTTP answers one bundle request, as OPA's downloader
// (v1/download) makes it: GET <path> with If-None-Match (the ETag it
// holds, and possibly older ones, comma-separated) and Prefer
// ("modes=snapshot,delta;wait=<seconds>" when it long-polls). In phases:
// identify the client by its SVID, authorize the bundle, find it, wait
// while the client holds it and asks to wait, answer.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.refuse(w, r, http.StatusMethodNotAllowed, fmt.Errorf("bundleserver: method %s: bundles are read with GET", r.Method))
		return
	}
	id, err := peerID(r)
	if err != nil {
		s.refuse(w, r, http.StatusUnauthorized, err)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/")
	if err := s.authorize(id, name); err != nil {
		s.refuse(w, r, http.StatusForbidden, err)
		return
	}
	b, _ := s.lookup(name)
	if b == nil {
		s.refuse(w, r, http.StatusNotFound, fmt.Errorf("bundleserver: bundle %s is not built (yet): the controller's /debug/state lists its problems", name))
		return
	}
	held := ifNoneMatch(r.Header)
	if held(b.etag) {
		if wait := preferWait(r.Header, s.cfg.MaxWait); wait > 0 {
			b = s.await(r.Context(), name, b, wait, held)
		}
		if b == nil {
			s.refuse(w, r, http.StatusNotFound, fmt.Errorf("bundleserver: bundle %s is no longer served", name))
			return
		}
	}
	h := w.Header()
	h.Set("ETag", b.etag)
	h.Set("Content-Type", ContentType)
	if held(b.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(b.archive)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(b.archive) // a client gone mid-body polls again
	}
	s.log.Debug("bundle served", "bundle", name, "revision", b.revision, "client", id.String())
}

// authorize lets a proxy read the bundles the state stream names for it,
// and nothing else: a waypoint only its own Gateway's, a ztunnel the
// mesh-wide bundle.
func (s *Server) authorize(id spiffeid.ID, name string) error {
	p, err := s.cfg.Proxies.Identify(id)
	if err != nil {
		return fmt.Errorf("bundleserver: %w", err)
	}
	mine := s.cfg.Proxies.Bundles(p)
	if !slices.Contains(mine, name) {
		return fmt.Errorf("bundleserver: %s (a %s) may read %s only, not %q", id, p.Kind, strings.Join(mine, ", "), name)
	}
	return nil
}

// await holds a long poll while the client holds the bundle served: it
// returns the bundle once that changes (nil if it is gone), or as it is
// when wait ends, the client leaves or the server closes.
func (s *Server) await(ctx context.Context, name string, b *served, wait time.Duration, held func(string) bool) *served {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	for {
		cur, changed := s.lookup(name)
		if cur == nil || !held(cur.etag) {
			return cur
		}
		select {
		case <-changed:
		case <-timer.C:
			return cur
		case <-ctx.Done():
			return cur
		case <-s.closed:
			return cur
		}
	}
}

// refuse answers an error: the one place a refusal becomes a status.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, err error) {
	level := slog.LevelWarn
	if code == http.StatusNotFound {
		level = slog.LevelInfo
	}
	s.log.Log(r.Context(), level, "bundle request refused", "path", r.URL.Path, "status", code, "error", err)
	http.Error(w, err.Error(), code)
}

// peerID is the SPIFFE ID of the client's verified certificate.
func peerID(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("bundleserver: no client certificate: proxies fetch bundles over mutual TLS with their SVIDs")
	}
	id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("bundleserver: client certificate: %w", err)
	}
	return id, nil
}

// ifNoneMatch returns whether an ETag is among those the request says
// its client holds (RFC 9110 If-None-Match: a list, weak tags compared
// weakly, "*" for any).
func ifNoneMatch(h http.Header) func(etag string) bool {
	var tags []string
	for _, v := range h.Values("If-None-Match") {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimPrefix(strings.TrimSpace(t), "W/"); t != "" {
				tags = append(tags, t)
			}
		}
	}
	return func(etag string) bool { return slices.Contains(tags, etag) || slices.Contains(tags, "*") }
}

// preferWait is the long poll a request asks for (Prefer: wait=<seconds>,
// RFC 7240; OPA joins its preferences with ";"), at most max; 0 for none.
func preferWait(h http.Header, max time.Duration) time.Duration {
	for _, v := range h.Values("Prefer") {
		for p := range strings.FieldsFuncSeq(v, func(r rune) bool { return r == ';' || r == ',' }) {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "wait") {
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil || n <= 0 {
				return 0
			}
			if time.Duration(n) > max/time.Second {
				return max // and no overflow
			}
			return time.Duration(n) * time.Second
		}
	}
	return 0
}
