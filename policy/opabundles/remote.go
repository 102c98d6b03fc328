package opabundles

import (
	"context"
	"errors"
	"net"
	"net/url"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/download"
	bundleplugin "github.com/open-policy-agent/opa/v1/plugins/bundle"
	"github.com/open-policy-agent/opa/v1/plugins/rest"

	"github.com/regomesh/regomesh/policy"
)

// source is one remote bundle and OPA's downloader for it. The downloader
// polls (or long-polls) on its own goroutine, sending If-None-Match with
// the ETag of the copy it last handed over, and backs off after failures;
// update runs on that goroutine.
type source struct {
	name, service, resource string
	downloader              *download.Downloader
	// etag is the ETag of the good copy (the one in force, or waiting for
	// the others); only the downloader's goroutine touches it.
	etag string
}

// parserOptions parse downloaded bundles as ReadBundle parses files:
// Rego v1 unless the manifest says otherwise, annotations processed.
var parserOptions = ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true}

// newSource configures OPA's downloader as OPA's bundle plugin does, but
// with data read eagerly: the engine activates parsed bundles.
func (s *Set) newSource(name string, cfg *bundleplugin.Source, client rest.Client) *source {
	src := &source{name: name, service: cfg.Service, resource: cfg.Resource}
	src.downloader = download.New(cfg.Config, client, cfg.Resource).
		WithCallback(func(ctx context.Context, u download.Update) error { return s.update(ctx, src, u) }).
		WithBundleVerificationConfig(cfg.Signing).
		WithSizeLimitBytes(cfg.SizeLimitBytes).
		WithBundleName(name).
		WithBundleParserOpts(parserOptions).
		WithLogAttrs(map[string]any{"bundle": name})
	return src
}

// update handles one answer of src's server: a new copy is activated with
// the rest of the set; a failure or a rejected copy leaves everything in
// force and makes the downloader ask again for what the good copy's ETag
// does not match (as OPA's bundle plugin does), after its backoff.
func (s *Set) update(ctx context.Context, src *source, u download.Update) error {
	if ctx.Err() != nil {
		return nil // Stop cancelled the request in flight
	}
	s.status.update(src.name, func(st *bundleplugin.Status) {
		st.SetRequest()
		if u.Error == nil {
			st.LastSuccessfulRequest = st.LastRequest
		}
		if u.Bundle != nil {
			st.SetDownloadSuccess()
			st.SetBundleSize(u.Size)
		}
	})
	if u.Error != nil {
		s.reject(src, reasonOf(u.Error), "", u.Error)
		return u.Error
	}
	if u.Bundle == nil {
		s.opts.Metrics.unchanged(src.name)
		s.log.Debug("remote bundle not modified", "bundle", src.name, "etag", u.ETag)
		return nil
	}
	revision := u.Bundle.Manifest.Revision
	b, err := policy.NewBundle(src.name, u.Bundle)
	if err == nil {
		err = s.offer(ctx, b)
	}
	if err != nil {
		s.reject(src, reasonActivation, revision, err)
		return err
	}
	src.etag = u.ETag
	return nil
}

// offer makes b the latest copy of its bundle if the set with it loads,
// or, before every bundle has a copy, keeps it for the first set.
func (s *Set) offer(ctx context.Context, b *policy.Bundle) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	previous, had := s.latest[b.Name]
	s.latest[b.Name] = b
	switch err := s.loadLocked(ctx, "new revision downloaded"); err {
	case nil:
		return nil
	case errIncomplete:
		delete(s.why, b.Name)
		s.log.Info("remote bundle downloaded; waiting for the other bundles before activating", "bundle", b.Name, "revision", b.Revision)
		return nil
	default:
		if had {
			s.latest[b.Name] = previous
		} else {
			delete(s.latest, b.Name)
		}
		return err
	}
}

// reject counts and logs a copy of src that changed nothing.
func (s *Set) reject(src *source, reason, rev string, err error) {
	s.opts.Metrics.failed(src.name, reason)
	s.status.update(src.name, func(st *bundleplugin.Status) { st.SetError(err) })
	src.downloader.SetCache(src.etag)
	s.mu.Lock()
	good := revision(s.latest[src.name])
	ready := s.ready.Load()
	if _, ok := s.latest[src.name]; !ok {
		s.why[src.name] = err
	}
	s.mu.Unlock()
	what := "remote bundle rejected"
	if reason == reasonDownload {
		what = "remote bundle download failed"
	}
	msg := what + "; its last good copy stays in force"
	if !ready {
		msg = what + "; every decision denies until each bundle has a good copy"
	}
	s.log.Error(msg, "bundle", src.name, "revision", rev, "reason", reason, "last_good_revision", good, "error", err)
}

// reasonOf tells a failed download from a downloaded bundle that OPA's
// reader refused.
func reasonOf(err error) string {
	var status download.HTTPError
	var urlErr *url.Error
	var netErr net.Error
	if errors.As(err, &status) || errors.As(err, &urlErr) || errors.As(err, &netErr) {
		return reasonDownload
	}
	return reasonBundle
}
