// Package opabundles keeps a proxy's policy current with the bundles an OPA
// configuration file names, downloaded with OPA's own bundle service
// client, so the bundle servers, signing and tooling OPA users run work
// unchanged against ztunnel and the waypoint.
//
// ReadConfig parses the file (--opa-config) with OPA's parsers: the
// services section (rest.New: URLs, headers, TLS, bearer and client-TLS
// credentials), keys (keys.ParseKeysConfig) and bundles
// (plugins/bundle: resource, service, polling, signing). Sections the
// proxies cannot honour are refused when ignoring them would mislead, and
// warned about otherwise (docs/bundles.md).
//
// A Set runs one OPA v1/download Downloader per bundle: ETag and
// If-None-Match, long polling when the server offers it, backoff after
// failures, signatures verified by OPA's reader as the bundle is read.
// Each new copy is checked as a local bundle would be (policy.NewBundle)
// and loaded with the proxy's --bundle files and the latest good copy of
// every other remote bundle as one set (policy.Engine.Load). A copy that
// fails to download, verify, parse or compile changes nothing: the set in
// force stays, with every bundle's last good copy. Nothing is loaded
// before every remote bundle has arrived once; until then the proxy is not
// ready and denies every decision, as the engine does with no policy.
package opabundles
