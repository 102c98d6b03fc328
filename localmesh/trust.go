package localmesh

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// TrustBundle is the mesh's X.509 trust bundle, from its SPIRE server: what
// a test's own HBONE client verifies the ztunnels against.
func (m *Mesh) TrustBundle(ctx context.Context) (*x509bundle.Bundle, error) {
	return m.server.Bundle(ctx)
}
