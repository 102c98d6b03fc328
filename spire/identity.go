package spire

import (
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Identities is what a proxy needs from its identity provider, per local
// workload identity: go-spiffe's x509svid.Source and x509bundle.Source,
// keyed by the identity the proxy acts for. Store implements it with SPIRE;
// tests of a proxy may implement it with fixed certificates.
type Identities interface {
	// SVID returns the current X509-SVID of identity id, or an error
	// wrapping ErrNoSVID that says why there is none (never a nil SVID with
	// a nil error): callers fail closed. The SVID is shared; do not modify it.
	SVID(id spiffeid.ID) (*x509svid.SVID, error)
	// Bundles returns the bundles identity id accepts peers from: its own
	// trust domain's and those of the trust domains its entry federates
	// with. It is looked up on every use, so it follows updates.
	Bundles(id spiffeid.ID) x509bundle.Source
}

// SVIDSource adapts one identity of ids to go-spiffe's x509svid.Source, for
// tlsconfig.MTLSServerConfig and friends. The TLS configuration asks it on
// every handshake, so a rotated SVID is used by the next handshake while
// established connections keep theirs.
func SVIDSource(ids Identities, id spiffeid.ID) x509svid.Source {
	return svidSource{ids: ids, id: id}
}

type svidSource struct {
	ids Identities
	id  spiffeid.ID
}

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.ids.SVID(s.id) }

// Store implements Identities.
var _ Identities = (*Store)(nil)
