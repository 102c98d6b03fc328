package spire

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// This file converts the agent's and server's wire types into the package's
// own, once, with validation; nothing else touches generated structs.

// X509SVIDUpdate is one message of an SVID subscription: every SVID the
// agent issues for the workload's selectors (one per matching entry; none
// when no entry matches), and the trust domains they federate with.
type X509SVIDUpdate struct {
	SVIDs         []*x509svid.SVID
	FederatesWith []spiffeid.TrustDomain
}

// find returns the SVID with SPIFFE ID id, or nil.
func (u X509SVIDUpdate) find(id spiffeid.ID) *x509svid.SVID {
	for _, svid := range u.SVIDs {
		if svid.ID == id {
			return svid
		}
	}
	return nil
}

// ids lists the SPIFFE IDs of the update's SVIDs, for messages.
func (u X509SVIDUpdate) ids() []string {
	ids := make([]string, len(u.SVIDs))
	for i, svid := range u.SVIDs {
		ids[i] = svid.ID.String()
	}
	return ids
}

func svidUpdateFromProto(resp *delegatedv1.SubscribeToX509SVIDsResponse) (X509SVIDUpdate, error) {
	var u X509SVIDUpdate
	for _, s := range resp.GetX509Svids() {
		svid, err := svidFromProto(s)
		if err != nil {
			return X509SVIDUpdate{}, err
		}
		u.SVIDs = append(u.SVIDs, svid)
	}
	for _, name := range resp.GetFederatesWith() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return X509SVIDUpdate{}, fmt.Errorf("spire: agent sent federated trust domain %q: %w", name, err)
		}
		u.FederatesWith = append(u.FederatesWith, td)
	}
	return u, nil
}

// svidFromProto parses an SVID and its key, and checks that the certificate
// carries the SPIFFE ID the agent announced with it.
func svidFromProto(s *delegatedv1.X509SVIDWithKey) (*x509svid.SVID, error) {
	announced, err := idFromProto(s.GetX509Svid().GetId())
	if err != nil {
		return nil, fmt.Errorf("spire: agent sent an SVID with SPIFFE ID %v: %w", s.GetX509Svid().GetId(), err)
	}
	chain := bytes.Join(s.GetX509Svid().GetCertChain(), nil)
	svid, err := x509svid.ParseRaw(chain, s.GetX509SvidKey())
	if err != nil {
		return nil, fmt.Errorf("spire: agent sent an unparsable SVID for %s: %w", announced, err)
	}
	if svid.ID != announced {
		return nil, fmt.Errorf("spire: agent announced an SVID for %s whose certificate is for %s", announced, svid.ID)
	}
	return svid, nil
}

func idFromProto(id *types.SPIFFEID) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(id.GetTrustDomain())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, id.GetPath())
}

func idToProto(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// bundlesFromProto parses the agent's bundle map: trust domain (as a name
// or spiffe://name) to concatenated DER CA certificates.
func bundlesFromProto(resp map[string][]byte) (*x509bundle.Set, error) {
	set := x509bundle.NewSet()
	for name, der := range resp {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("spire: agent sent a bundle for trust domain %q: %w", name, err)
		}
		certs, err := x509.ParseCertificates(der)
		if err != nil {
			return nil, fmt.Errorf("spire: agent sent an unparsable bundle for %s: %w", td, err)
		}
		set.Add(x509bundle.FromX509Authorities(td, certs))
	}
	return set, nil
}

func selectorsToProto(selectors []Selector) []*types.Selector {
	out := make([]*types.Selector, len(selectors))
	for i, s := range selectors {
		out[i] = &types.Selector{Type: s.Type, Value: s.Value}
	}
	return out
}

func selectorsFromProto(selectors []*types.Selector) []Selector {
	out := make([]Selector, len(selectors))
	for i, s := range selectors {
		out[i] = Selector{Type: s.GetType(), Value: s.GetValue()}
	}
	return out
}

func entryToProto(reg Registration) *types.Entry {
	return &types.Entry{
		SpiffeId:      idToProto(reg.ID),
		ParentId:      idToProto(reg.Parent),
		Selectors:     selectorsToProto(reg.Selectors),
		X509SvidTtl:   int32(reg.X509SVIDTTL / time.Second),
		FederatesWith: trustDomainNames(reg.FederatesWith),
	}
}

// trustDomainNames lists trust domains as the entry API wants them: names.
func trustDomainNames(tds []spiffeid.TrustDomain) []string {
	names := make([]string, len(tds))
	for i, td := range tds {
		names[i] = td.Name()
	}
	return names
}

func entryFromProto(e *types.Entry) (Registration, error) {
	id, err := idFromProto(e.GetSpiffeId())
	if err != nil {
		return Registration{}, err
	}
	parent, err := idFromProto(e.GetParentId())
	if err != nil {
		return Registration{}, err
	}
	reg := Registration{ID: id, Parent: parent, Selectors: selectorsFromProto(e.GetSelectors()),
		X509SVIDTTL: time.Duration(e.GetX509SvidTtl()) * time.Second}
	for _, name := range e.GetFederatesWith() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return Registration{}, err
		}
		reg.FederatesWith = append(reg.FederatesWith, td)
	}
	return reg, nil
}
