package ztunnel

import (
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Identities supplies the SVIDs of the node's workloads: SPIRE's Delegated
// Identity API in production (cmd/ztunnel wires it), so ztunnel never holds
// keys of other nodes' workloads. ztunnel asks on every handshake, so
// rotated SVIDs are used at once.
type Identities interface {
	// SVID is the current SVID of identity id, or an error saying why
	// there is none: then there is no tunnel (never plaintext).
	SVID(id spiffeid.ID) (*x509svid.SVID, error)
	// Bundles are the trust bundles id accepts peers from.
	Bundles(id spiffeid.ID) x509bundle.Source
	// Hold starts fetching the SVID of a local pod running as
	// namespace/serviceAccount with identity id; Release undoes one Hold.
	Hold(id spiffeid.ID, namespace, serviceAccount string) error
	Release(id spiffeid.ID)
}

// svidOf adapts one identity to go-spiffe's x509svid.Source.
type svidOf struct {
	ids Identities
	id  spiffeid.ID
}

func (s svidOf) GetX509SVID() (*x509svid.SVID, error) { return s.ids.SVID(s.id) }
