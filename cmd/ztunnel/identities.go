package main

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/ztunnel"
)

// spireIdentities gives ztunnel its pods' SVIDs from the node's SPIRE
// agent (Delegated Identity API), by Kubernetes selectors.
type spireIdentities struct {
	*spire.Store
}

var _ ztunnel.Identities = spireIdentities{}

func (s spireIdentities) Hold(id spiffeid.ID, namespace, serviceAccount string) error {
	return s.Add(spire.Workload{ID: id, Selectors: spire.KubernetesSelectors(namespace, serviceAccount)})
}

func (s spireIdentities) Release(id spiffeid.ID) { s.Remove(id) }
