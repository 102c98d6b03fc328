package opabundles

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SVIDPlugin is the one credentials plugin an OPA configuration may name
// (credentials: {plugin: regomesh_svid}): the proxy presents its own
// SPIFFE SVID as the client certificate and accepts the server only if it
// presents the SPIFFE ID SVIDCredentials.Server, verified against the
// proxy's trust bundle. It is how the proxies authenticate to the
// controller's bundle server, whose certificates SPIRE keeps in memory,
// not in the files OPA's client_tls reads.
const SVIDPlugin = "regomesh_svid"

// SVIDCredentials are the proxy's identity and trust for services whose
// credentials name SVIDPlugin. Both sources are asked at every TLS
// handshake, so a rotated SVID or trust bundle is used from the next
// connection on.
type SVIDCredentials struct {
	// SVID is the proxy's own SVID (its Workload API source).
	SVID x509svid.Source
	// Bundle holds the trust bundles the server's SVID is verified with.
	Bundle x509bundle.Source
	// Server is the SPIFFE ID the server must present: the controller's
	// (--controller-identity).
	Server spiffeid.ID
}

// svidPlugin is SVIDCredentials as OPA's REST client takes credentials.
type svidPlugin struct{ creds *SVIDCredentials }

var _ rest.HTTPAuthPlugin = svidPlugin{}

// NewClient is called by OPA's REST client once per client (again when
// the downloader changes its response header timeout): the TLS
// configuration it returns reads both sources at each handshake, not a
// copy taken now.
func (p svidPlugin) NewClient(c rest.Config) (*http.Client, error) {
	if err := checkSVIDService(c); err != nil {
		return nil, err
	}
	tlsConfig := tlsconfig.MTLSClientConfig(p.creds.SVID, p.creds.Bundle, tlsconfig.AuthorizeID(p.creds.Server))
	timeout := int64(0)
	if c.ResponseHeaderTimeoutSeconds != nil {
		timeout = *c.ResponseHeaderTimeoutSeconds
	}
	return rest.DefaultRoundTripperClient(tlsConfig, timeout), nil
}

// Prepare adds nothing to a request: the SVID authenticates the
// connection.
func (svidPlugin) Prepare(*http.Request) error { return nil }

// checkSVIDService refuses the settings a service with SVIDPlugin would
// silently not honour: plain HTTP (no certificate would be presented),
// and server TLS settings (the server is verified by SPIFFE ID against
// the SPIRE trust bundle, not by a CA file or host name).
func checkSVIDService(c rest.Config) error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" {
		return fmt.Errorf("credentials plugin %s needs an https url, not %q: the SVID is presented in TLS (docs/bundles.md)", SVIDPlugin, c.URL)
	}
	if c.TLS != nil || c.AllowInsecureTLS {
		return fmt.Errorf("credentials plugin %s verifies the server by its SPIFFE ID with the SPIRE trust bundle: remove tls and allow_insecure_tls (docs/bundles.md)", SVIDPlugin)
	}
	return nil
}

// authPlugins is the lookup OPA's REST client resolves credentials.plugin
// with: SVIDPlugin when creds are given, nothing else.
func authPlugins(creds *SVIDCredentials) rest.AuthPluginLookupFunc {
	return func(name string) rest.HTTPAuthPlugin {
		if name != SVIDPlugin || creds == nil {
			return nil
		}
		return svidPlugin{creds}
	}
}

// errNoSVID: a service names SVIDPlugin but the proxy was given no SVID.
var errNoSVID = errors.New("credentials plugin " + SVIDPlugin + " needs the proxy's SVID, which it has only with --controller (docs/bundles.md)")
