package bundleserver

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// NewHTTPServer serves s over mutual TLS: it presents svid's current SVID
// and accepts clients with an SVID of td that bundle verifies; which
// bundles each may read is decided per request. Serve it with
// ServeTLS(l, "", ""). Its Shutdown ends the long polls first (Close).
//
// Stock OPA clients verify the server by host name, not SPIFFE ID: the
// controller's SVID must then carry the name they dial as a DNS SAN.
func NewHTTPServer(s *Server, td spiffeid.TrustDomain, svid x509svid.Source, bundle x509bundle.Source) *http.Server {
	srv := &http.Server{
		Handler:           s,
		TLSConfig:         tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// A long poll answers after at most MaxWait; a minute more sends
		// the largest bundle to a slow reader.
		WriteTimeout: s.cfg.MaxWait + time.Minute,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	srv.RegisterOnShutdown(s.Close)
	return srv
}
