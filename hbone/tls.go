package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// alpnH2 is offered by both ends, as Istio's ztunnel does.
const alpnH2 = "h2"

// serverTLS builds the server's TLS 1.3 mTLS configuration, once: it
// presents the server's SVID, requires a client SVID that verifies
// against the trust bundles, and applies the optional authorizer.
func serverTLS(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	if authorize == nil {
		authorize = tlsconfig.AuthorizeAny()
	}
	cfg := tlsconfig.MTLSServerConfig(svid, bundle, authorize)
	return hardenTLS(cfg)
}

// clientTLS builds the configuration for one connection: it presents the
// source's SVID and requires the server to be exactly peer.
func clientTLS(svid *x509svid.SVID, bundle x509bundle.Source, peer spiffeid.ID) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(peer))
	return hardenTLS(cfg)
}

func hardenTLS(cfg *tls.Config) *tls.Config {
	cfg.MinVersion = tls.VersionTLS13
	cfg.MaxVersion = tls.VersionTLS13
	cfg.NextProtos = []string{alpnH2}
	// Full-size records from the first byte: tunnels carry bulk data, and
	// the HTTP/2 writer already sizes its writes.
	cfg.DynamicRecordSizingDisabled = true
	return cfg
}

// sourceSVID fetches the SVID a client presents, failing closed.
func sourceSVID(src x509svid.Source) (*x509svid.SVID, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: Request.Source is nil", ErrNoSVID)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("%w: %w (is the SPIRE agent reachable and this workload registered?)", ErrNoSVID, err)
	}
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, fmt.Errorf("%w: the source returned an empty SVID", ErrNoSVID)
	}
	return svid, nil
}

// peerID returns the SPIFFE ID of a verified TLS peer.
func peerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("hbone: peer presented no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
